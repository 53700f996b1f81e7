//! Crash points for the tests. Points: `secret-written` (a secret's value is written, its custom
//! metadata not yet: the first one is the bundle), `bundle-stored`, `vm-cloned`, `vm-started`,
//! `config-applied`, `etcd-bootstrapped` (Bootstrap answered, the `bootstrapped-at` marker not yet
//! written), `kubeconfig-stored`, `decommission-started` (a removed cluster's removal commit is
//! pushed, none of its VMs destroyed yet), `vm-rebooted` (a resized node is back from its Proxmox
//! reboot, still cordoned). Two ways to stop there:
//!
//! - The end-to-end tests set `KILN_TEST_PAUSE_AT=<point>`: the process announces `KILN PAUSED AT
//!   <point>` on stderr the first time it reaches that point and stops itself (SIGSTOP, every thread
//!   at once), so a test can `kill -9` it at an exact step of its progress (or SIGCONT it on).
//! - The in-process tests arm a [`Freeze`] on the threads of the runtime that runs one engine (many
//!   engines share a test binary, so the point must not be process-wide). The task that reaches the
//!   point stops dead there, forever, and the test is told; what was written before it stays, nothing
//!   after it runs, and a new engine over the same state can take over.
//!
//! Without either, every call is a thread-local read and nothing more.

use std::cell::RefCell;
use std::sync::{Arc, OnceLock};

pub const ENV: &str = "KILN_TEST_PAUSE_AT";

fn wanted() -> Option<&'static str> {
    static WANTED: OnceLock<Option<String>> = OnceLock::new();
    WANTED
        .get_or_init(|| std::env::var(ENV).ok().filter(|v| !v.is_empty()))
        .as_deref()
}

thread_local! {
    static ARMED: RefCell<Option<Arc<Freeze>>> = const { RefCell::new(None) };
}

/// An in-process crash point: armed on some threads, it freezes the first task that reaches `point`
/// on one of them.
#[derive(Debug)]
pub struct Freeze {
    point: String,
    reached: tokio::sync::Notify,
}

impl Freeze {
    pub fn new(point: &str) -> Arc<Self> {
        Arc::new(Self {
            point: point.to_owned(),
            reached: tokio::sync::Notify::new(),
        })
    }

    /// Arms the point on the calling thread (a runtime's `on_thread_start`, so that every thread that
    /// may run the engine's tasks carries it).
    pub fn arm_current_thread(self: &Arc<Self>) {
        ARMED.with(|a| *a.borrow_mut() = Some(self.clone()));
    }

    pub fn point(&self) -> &str {
        &self.point
    }

    /// Returns once a task has reached the point (and is frozen there).
    pub async fn reached(&self) {
        self.reached.notified().await;
    }

    fn freeze_here(&self) -> ! {
        // `notify_one` keeps a permit when the test is not waiting yet, so the signal is never lost.
        self.reached.notify_one();
        let park_forever = || -> ! {
            loop {
                std::thread::park();
            }
        };
        // On a multi-threaded runtime, hand this worker's other tasks (a simulated machine's server,
        // say) to another thread first: only the task at the crash point stops, as its process would.
        match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
            Ok(tokio::runtime::RuntimeFlavor::MultiThread) => {
                tokio::task::block_in_place(park_forever)
            }
            _ => park_forever(),
        }
    }
}

/// Marks that the process has just reached `point`.
pub fn reached(point: &str) {
    let armed = ARMED.with(|a| a.borrow().clone());
    if let Some(freeze) = armed
        && freeze.point == point
    {
        freeze.freeze_here();
    }
    if wanted() != Some(point) {
        return;
    }
    // Once per process. The lock is held through the stop, so a task reaching the point meanwhile
    // waits here (never past it before the stop) and passes only after a SIGCONT.
    static PAUSED: std::sync::Mutex<bool> = std::sync::Mutex::new(false);
    let mut paused = PAUSED.lock().unwrap_or_else(|e| e.into_inner());
    if *paused {
        return;
    }
    *paused = true;
    eprintln!("KILN PAUSED AT {point}");
    // Stopping the whole process (not one thread) freezes every cluster's work at this instant. A
    // SIGCONT resumes it right here (the HA test resumes a leader that lost its lease meanwhile).
    // Sent to this thread's id, not the process id: a stop sent to the process is taken by one
    // thread of the kernel's choosing, and until that one runs, this thread could return from
    // waiting on `kill` and run past the point (seen: the next Vault write sent 3 ms after the
    // announcement on a loaded machine). Addressed to this thread, it is this thread that stops.
    let target = std::fs::read_link("/proc/thread-self")
        .ok()
        .and_then(|link| link.file_name().map(|t| t.to_string_lossy().into_owned()))
        .unwrap_or_else(|| std::process::id().to_string());
    let stopped = std::process::Command::new("kill")
        .args(["-STOP", &target])
        .status()
        .is_ok_and(|s| s.success());
    if stopped {
        return;
    }
    // If SIGSTOP could not be sent, hold this thread so the point is still never passed.
    loop {
        std::thread::sleep(std::time::Duration::from_secs(3600));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};

    /// The task at an armed point stops there for good while the rest of its runtime runs on, and a
    /// thread where nothing is armed passes the same point.
    #[test]
    fn an_armed_point_freezes_only_the_task_that_reaches_it() {
        let freeze = Freeze::new("vm-cloned");
        let armed = freeze.clone();
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .on_thread_start(move || armed.arm_current_thread())
            .build()
            .unwrap();
        let passed = Arc::new(AtomicBool::new(false));
        let after = passed.clone();
        let task = rt.spawn(async move {
            reached("bundle-stored");
            reached("vm-cloned");
            after.store(true, Ordering::SeqCst);
        });
        rt.block_on(async {
            freeze.reached().await;
            // The runtime still runs other tasks: a simulated server living on it keeps answering.
            assert_eq!(rt_spawned_answer().await, 42);
        });
        assert!(!task.is_finished());
        assert!(!passed.load(Ordering::SeqCst), "ran past the crash point");
        // Not armed here: the same point is a no-op.
        reached("vm-cloned");
        rt.shutdown_background();
    }

    async fn rt_spawned_answer() -> u32 {
        tokio::spawn(async { 42 }).await.unwrap()
    }
}
