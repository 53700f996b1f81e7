//! Issue 30: the etcd snapshot streams through kiln's client as Talos sends it, with a deadline on
//! progress rather than on the whole stream, and a failed upload source cancels the upload.

use std::time::{Duration, Instant};

use futures::StreamExt;
use kiln::backup::bbolt;
use kiln::sim::talos::NodeSpec;
use kiln::talos::credentials::TalosRole;
use kiln::talos::grpc::{ClientOptions, GrpcTalos, TalosError, TalosPort, UploadStream};

use super::{addr, admin, cluster, config_for, identity, ip, start_sim};

fn node(last: u8) -> NodeSpec {
    NodeSpec {
        addr: addr(last),
        uuid: None,
        version: None,
        platform: None,
    }
}

/// A port whose per-call deadline is short, so the tests see it act.
fn port_with(call_timeout: Duration) -> GrpcTalos {
    GrpcTalos {
        port: 50000,
        options: ClientOptions {
            connect_timeout: Duration::from_secs(5),
            call_timeout,
        },
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_healthy_snapshot_stream_outlasts_the_call_deadline_and_a_stalled_one_does_not() {
    let sim = start_sim(&[node(161)]).await;
    let c = cluster("snap", 161, 1, 0);
    let setup = port_with(Duration::from_secs(30));
    let id = admin();
    setup
        .apply_in_maintenance(ip(161), "", config_for(&c, ip(161)).as_bytes())
        .await
        .unwrap();
    setup.bootstrap(ip(161), &id).await.unwrap();

    // The os:etcd:backup role may take snapshots (Talos's role table).
    let backup = identity(TalosRole::EtcdBackup);
    let deadline = Duration::from_millis(400);
    let talos = port_with(deadline);
    sim.pace_stream("EtcdSnapshot", Duration::from_millis(50), None);
    let started = Instant::now();
    let mut stream = talos.etcd_snapshot(ip(161), &backup).await.unwrap();
    let mut check = bbolt::SnapshotCheck::new();
    let mut chunks = 0;
    while let Some(chunk) = stream.next().await {
        check.feed(&chunk.unwrap()).unwrap();
        chunks += 1;
    }
    let facts = check.finish().unwrap();
    assert!(
        started.elapsed() > deadline * 2,
        "{chunks} chunks in {:?}: the stream should outlast the deadline",
        started.elapsed()
    );
    assert!(facts.has_hash_trailer);

    // Three chunks, then silence with the stream open: an error one deadline later, not a hang.
    sim.pace_stream("EtcdSnapshot", Duration::from_millis(10), Some(3));
    let mut stream = talos.etcd_snapshot(ip(161), &backup).await.unwrap();
    let mut got = 0;
    let err = loop {
        match stream.next().await {
            Some(Ok(_)) => got += 1,
            Some(Err(e)) => break e,
            None => panic!("a stalled stream ended cleanly after {got} chunks"),
        }
    };
    assert_eq!(got, 3);
    assert!(matches!(err, TalosError::Timeout { .. }), "{err}");
    assert!(
        stream.next().await.is_none(),
        "the stream ends after its error"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_whose_source_fails_is_cancelled_not_completed() {
    let sim = start_sim(&[node(162)]).await;
    let c = cluster("snapup", 162, 1, 0);
    let talos = port_with(Duration::from_secs(30));
    let id = admin();
    talos
        .apply_in_maintenance(ip(162), "", config_for(&c, ip(162)).as_bytes())
        .await
        .unwrap();
    talos.bootstrap(ip(162), &id).await.unwrap();
    let snapshot = kiln::talos::grpc::collect(talos.etcd_snapshot(ip(162), &id).await.unwrap())
        .await
        .unwrap();
    let node = talos.connect(ip(162), &id).await.unwrap();
    node.reset_ephemeral().await.unwrap();
    drop(node);
    let node = super::connect_when_back(&talos, ip(162), &id).await;

    // Half the snapshot, then a read error (a decryption that fails its MAC, say).
    let half = bytes::Bytes::copy_from_slice(&snapshot[..snapshot.len() / 2]);
    let source: UploadStream = Box::pin(futures::stream::iter(vec![
        Ok(half),
        Err(std::io::Error::other(
            "age: the payload's MAC does not match",
        )),
    ]));
    let err = node.etcd_recover(source).await.unwrap_err();
    assert!(matches!(err, TalosError::Source { .. }), "{err}");
    assert!(err.to_string().contains("MAC"), "{err}");

    // The call was reset, not closed. Real Talos (grpc-go) fails its Recv with Canceled and removes
    // the partial file; the simulator's HTTP/2 server (hyper reads a CANCEL reset as the body's end,
    // `body/incoming.rs`) keeps what it had read by then — the half, or nothing when the reset
    // overtook the data (CI saw "the stream is empty"). Either way no recovery comes of it.
    node.bootstrap_recover().await.unwrap();
    let (state, message) = super::etcd_state(&*node).await;
    assert_eq!(state, "Failed");
    assert!(
        message.contains("no such file")
            || message.contains("truncated")
            || message.contains("the stream is empty"),
        "{message}"
    );
    drop(sim);
}
