//! DESIGN.md §8: systemd's watchdog is fed by the engine's progress, not by a timer. The engine
//! brings a cluster up while the relay feeds a watchdog much shorter than the bring-up (so every wait
//! on the way must count as progress), then stops dead at a crash point (a [`Freeze`], as a hung
//! engine would): the relay must notice and stop feeding, so systemd would restart kiln.

use std::sync::Arc;
use std::time::Duration;

use kiln::systemd::{Liveness, Notifier, relay_watchdog};
use kiln::testhook::Freeze;
use tokio::net::UnixDatagram;
use tokio::sync::mpsc;

use super::{CONVERGE, Settings, Site};
use crate::fixture::ClusterFixture;

/// Longer than the engine's longest single wait on the way (a bootstrap probe waits 5 s for an
/// answer a real Talos node gives only at the caller's deadline), far shorter than the bring-up.
const WATCHDOG: Duration = Duration::from_secs(6);

/// Every datagram sent to the fake systemd, in order.
fn fake_systemd(dir: &std::path::Path) -> (String, mpsc::UnboundedReceiver<String>) {
    let path = dir.join("notify");
    let socket = UnixDatagram::bind(&path).expect("the notify socket");
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut buf = vec![0u8; 4096];
        while let Ok(n) = socket.recv(&mut buf).await {
            if tx
                .send(String::from_utf8_lossy(&buf[..n]).into_owned())
                .is_err()
            {
                return;
            }
        }
    });
    (path.to_str().unwrap().to_owned(), rx)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_engine_stops_feeding_the_watchdog() {
    let c = ClusterFixture::new("dogfed", 1, 0);
    let site = Site::new(&[&c]);
    let dir = tempfile::tempdir().unwrap();
    let (socket, mut received) = fake_systemd(dir.path());
    let notifier = Arc::new(Notifier::new(Some(&socket), Some(WATCHDOG)).unwrap());
    let liveness = Liveness::new();

    // The engine runs on a runtime of its own whose threads carry the crash point.
    let freeze = Freeze::new("kubeconfig-stored");
    let armed = freeze.clone();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .on_thread_start(move || armed.arm_current_thread())
        .build()
        .unwrap();
    let mut engine = site
        .engine(Settings::default())
        .await
        .with_liveness(liveness.clone());
    // As `kiln run` does: the relay starts with READY, the engine's first cycle right after.
    liveness.touch();
    tokio::spawn(relay_watchdog(notifier, liveness));
    let mut run = rt
        .handle()
        .spawn(async move { engine.run_once(CONVERGE).await });
    tokio::select! {
        () = freeze.reached() => {}
        ended = &mut run => panic!("the engine never reached the crash point; it ended with {ended:?}"),
        () = tokio::time::sleep(CONVERGE) => panic!("the engine did not reach the crash point in {CONVERGE:?}"),
    }

    // Clone, boot, configure, bootstrap, health: far longer than the watchdog, all of it progress.
    let mut before = Vec::new();
    while let Ok(m) = received.try_recv() {
        before.push(m);
    }
    assert!(
        before.iter().filter(|m| *m == "WATCHDOG=1\n").count() >= 2,
        "the relay fed the watchdog while the engine worked: {before:?}"
    );
    assert!(
        !before.iter().any(|m| m.contains("stalled")),
        "the engine was taken for stalled while it brought a cluster up: {before:?}"
    );

    // Hung: the relay says so and stops feeding.
    let stalled = tokio::time::timeout(WATCHDOG * 4, async {
        loop {
            let m = received.recv().await.expect("the fake systemd listens");
            if m.starts_with("STATUS=engine stalled") {
                return m;
            }
        }
    })
    .await
    .expect("the relay went on feeding the watchdog of a hung engine");
    assert!(stalled.contains("no progress for"), "{stalled}");
    // Two more feeding periods without a ping (a systemd would have restarted kiln by then).
    let quiet = tokio::time::timeout(WATCHDOG, async {
        loop {
            let m = received.recv().await.expect("the fake systemd listens");
            if m.contains("WATCHDOG=1") {
                return m;
            }
        }
    })
    .await;
    assert!(
        quiet.is_err(),
        "the watchdog was fed after the relay saw the engine stalled"
    );
    rt.shutdown_background();
}
