//! Crash points for the end-to-end tests. With `KILN_TEST_PAUSE_AT=<point>` in the environment, the
//! process announces `KILN PAUSED AT <point>` on stderr the first time it reaches that point and stops
//! itself (SIGSTOP, every thread at once), so a test can `kill -9` it at an exact step of its progress.
//! Without the variable every call is a no-op. Points: `secret-written` (a secret's value is written,
//! its custom metadata not yet: the first one is the bundle), `bundle-stored`, `vm-cloned`,
//! `vm-started`, `config-applied`, `etcd-bootstrapped` (Bootstrap answered, the `bootstrapped-at`
//! marker not yet written), `kubeconfig-stored`.

use std::sync::OnceLock;

pub const ENV: &str = "KILN_TEST_PAUSE_AT";

fn wanted() -> Option<&'static str> {
    static WANTED: OnceLock<Option<String>> = OnceLock::new();
    WANTED
        .get_or_init(|| std::env::var(ENV).ok().filter(|v| !v.is_empty()))
        .as_deref()
}

/// Marks that the process has just reached `point`.
pub fn reached(point: &str) {
    if wanted() != Some(point) {
        return;
    }
    eprintln!("KILN PAUSED AT {point}");
    let pid = std::process::id().to_string();
    // Stopping the whole process (not one thread) freezes every cluster's work at this instant.
    let _ = std::process::Command::new("kill")
        .args(["-STOP", &pid])
        .status();
    // If SIGSTOP could not be sent, hold this thread so the point is still never passed.
    loop {
        std::thread::sleep(std::time::Duration::from_secs(3600));
    }
}
