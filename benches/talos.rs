//! Talos hot paths: rendering the production example's five machine configs from an existing
//! bundle (budget 50 ms) and generating a bundle with its RSA-4096 key (budget 10 s).

use criterion::{Criterion, criterion_group, criterion_main};
use kiln::spec::{Cluster, ClusterDocument};
use kiln::talos::SecretsBundle;
use kiln::talos::config::render;

fn production() -> Cluster {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/examples/clusters/production.yaml"
    );
    let doc: ClusterDocument =
        serde_yaml::from_str(&std::fs::read_to_string(path).expect("example")).expect("parses");
    Cluster::expand(&doc).expect("expands")
}

fn bench(c: &mut Criterion) {
    let cluster = production();
    assert_eq!(cluster.nodes.len(), 5);
    let bundle = SecretsBundle::generate().expect("bundle");
    let version = cluster.spec.talos.version;
    c.bench_function("render five production machine configs", |b| {
        b.iter(|| {
            for node in &cluster.nodes {
                std::hint::black_box(render(&cluster, node, &bundle, version).expect("renders"));
            }
        })
    });
    let mut slow = c.benchmark_group("bundle");
    slow.sample_size(10);
    slow.bench_function("generate secrets bundle (RSA-4096)", |b| {
        b.iter(|| std::hint::black_box(SecretsBundle::generate().expect("bundle")))
    });
    slow.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
