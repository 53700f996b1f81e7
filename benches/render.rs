//! Rendering 1,000 clusters (target: under 1 s). `cargo bench --bench render`.

use std::collections::BTreeMap;
use std::path::PathBuf;

use criterion::{Criterion, criterion_group, criterion_main};
use kiln::render::{RenderSettings, Renderer};
use kiln::spec::{Cluster, ClusterDocument};

fn clusters(n: usize) -> Vec<Cluster> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("examples/clusters/production.yaml");
    let text = std::fs::read_to_string(&path).expect("example cluster");
    let doc: ClusterDocument = serde_yaml::from_str(&text).expect("example parses");
    (0..n)
        .map(|i| {
            let mut d = doc.clone();
            d.metadata.name = format!("c{i:04}").parse().expect("valid name");
            Cluster::expand(&d).expect("example expands")
        })
        .collect()
}

fn bench(c: &mut Criterion) {
    let clusters = clusters(1000);
    let settings = RenderSettings::default();
    let mut group = c.benchmark_group("render");
    group.sample_size(10);
    for threads in [1, 2] {
        let renderer = Renderer::new(&BTreeMap::new())
            .expect("templates compile")
            .with_threads(threads);
        group.bench_function(format!("1000 clusters, {threads} thread(s)"), |b| {
            b.iter(|| renderer.render(&clusters, &settings).expect("renders"))
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
