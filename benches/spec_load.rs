//! Loading and validating 1,000 distinct, valid intent files (DESIGN target: under 200 ms on the
//! 2-core build machine). Every file passes every rule, so the whole pipeline runs for each:
//! YAML parse, schema validation, typed decoding, the per-file rules and the cross-file rules.

use std::hint::black_box;
use std::path::PathBuf;

use criterion::{Criterion, criterion_group, criterion_main};

/// Cluster `i` lives in 10.(i/256).(i%256).0/24 with VMIDs `{1000+i}{n}`: nothing collides.
fn intent(i: usize) -> String {
    let net = format!("10.{}.{}", i / 256, i % 256);
    format!(
        "# yaml-language-server: $schema=../schemas/cluster.schema.json
apiVersion: kiln.dev/v1alpha1
kind: Cluster
metadata:
  name: c{i:04}
  labels: {{env: bench}}
spec:
  proxmox:
    nodes: [pve1, pve2, pve3]
    template: {{pve1: 9000, pve2: 9001, pve3: 9002}}
    storage: local-lvm
    bridge: vmbr0
    vlan: 20
    vmidPrefix: {prefix}
  talos:
    version: v1.13.9
    installImage: factory.talos.dev/nocloud-installer/ce4c980550dd2ab1b17bbf2b08801c7eb59418eafe8f279833297925d67c7515:v1.13.9
    extensions: [siderolabs/qemu-guest-agent, siderolabs/iscsi-tools, siderolabs/util-linux-tools]
  kubernetes:
    version: v1.34.1
  network:
    vip: {net}.10
    gateway: {net}.1
    prefixLength: 24
    nameservers: [{net}.1]
    lbRange: {net}.200-{net}.220
  registries:
    mirrors:
      docker.io: [\"https://registry.lan/v2/docker.io\"]
  controlPlane:
    resources: {{cores: 4, memoryGiB: 8, diskGiB: 100}}
    nodes:
      - {{ip: {net}.11}}
      - {{ip: {net}.12}}
      - {{ip: {net}.13}}
  workers:
    resources: {{cores: 4, memoryGiB: 16, diskGiB: 200}}
    nodes:
      - {{ip: {net}.14}}
      - {{ip: {net}.15, number: 5}}
  apps:
    ingress-nginx: {{enabled: false}}
    traefik: {{enabled: true}}
    monitoring:
      values:
        prometheus: {{prometheusSpec: {{retention: 3d}}}}
  backup:
    schedule: 6h
    keep: 14
    destination: s3://backups/c{i:04}
    ageRecipients: [\"age1qyqszqgpqyqszqgpqyqszqgpqyqszqgpqyqszqgpqyqszqgpqyqs3290gq\"]
",
        prefix = 1000 + i
    )
}

fn files() -> Vec<(PathBuf, String)> {
    (0..1000)
        .map(|i| (PathBuf::from(format!("clusters/c{i:04}.yaml")), intent(i)))
        .collect()
}

fn bench(c: &mut Criterion) {
    let files = files();
    let load = || kiln::spec::load(files.iter().map(|(p, t)| (p.as_path(), t.as_str())));
    // The benchmark is meaningless unless every file is valid and loaded.
    let outcome = load();
    assert!(outcome.invalid.is_empty(), "{:?}", outcome.invalid.first());
    assert_eq!(outcome.clusters.len(), 1000);
    assert!(
        outcome.warnings.is_empty(),
        "{:?}",
        outcome.warnings.first()
    );

    let mut group = c.benchmark_group("spec");
    group.sample_size(10);
    group.bench_function("load_and_validate_1000_files", |b| {
        b.iter(|| black_box(load()))
    });
    // The floor: parsing the YAML alone, which every load must do once per file.
    group.bench_function("yaml_parse_only_1000_files", |b| {
        b.iter(|| {
            for (_, t) in &files {
                black_box(kiln::spec::yaml_json::from_yaml(t).unwrap());
            }
        })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
