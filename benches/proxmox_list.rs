//! Classifying one `/cluster/resources?type=vm` listing of 5,000 VMs (DESIGN.md §3 "Observe
//! cheaply"): the per-cycle cost of observation on kiln's side, parse included.

use criterion::{Criterion, criterion_group, criterion_main};
use kiln::proxmox::{Inventory, Ownership};
use serde_json::json;
use std::hint::black_box;

/// A mixed estate: kiln VMs of 50 clusters, half-made clones, foreign VMs, mismatched kiln tags,
/// a few unknown states and containers.
fn listing(n: u32) -> Vec<u8> {
    let data: Vec<_> = (0..n)
        .map(|i| {
            // VMID = prefix 10 followed by the node number, as kiln derives it.
            let number = i + 1;
            let vmid = 100_000 + number;
            let node = format!("pve{}", i % 3 + 1);
            match i % 5 {
                0 | 1 => json!({"id": format!("qemu/{vmid}"), "type": "qemu", "vmid": vmid, "node": node,
                    "name": format!("c{}-wk-{number}", i % 50), "status": "running",
                    "template": 0, "tags": format!("kiln;kiln-cluster-c{};kiln-role-worker", i % 50),
                    "maxcpu": 4, "maxmem": 8u64 << 30, "maxdisk": 100u64 << 30}),
                2 => json!({"id": format!("qemu/{vmid}"), "type": "qemu", "vmid": vmid, "node": node,
                    "name": format!("web-{i}"), "status": if i % 7 == 0 { "unknown" } else { "running" },
                    "template": 0, "maxcpu": 2, "maxmem": 2u64 << 30, "maxdisk": 32u64 << 30}),
                3 => json!({"id": format!("qemu/{vmid}"), "type": "qemu", "vmid": vmid, "node": node,
                    "name": format!("c1-cp-{}", vmid % 100 + 100), "status": "stopped", "template": 0}),
                _ => json!({"id": format!("lxc/{vmid}"), "type": "lxc", "vmid": vmid, "node": node,
                    "name": format!("ct-{i}"), "status": "running"}),
            }
        })
        .collect();
    serde_json::to_vec(&json!({ "data": data })).unwrap()
}

fn bench(c: &mut Criterion) {
    // 6,250 entries, one in five a container: 5,000 QEMU VMs.
    let body = listing(6_250);
    let inv = Inventory::from_listing_json(&body).unwrap();
    assert_eq!(inv.len(), 5_000, "containers are dropped");
    assert_eq!(
        inv.iter()
            .filter(|v| matches!(v.ownership, Ownership::Kiln(_)))
            .count(),
        2_500
    );
    c.bench_function("classify 5000-VM listing", |b| {
        b.iter(|| Inventory::from_listing_json(black_box(&body)).unwrap())
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
