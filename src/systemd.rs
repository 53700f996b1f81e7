//! systemd's service protocol, done by hand: `sd_notify` datagrams (`READY=1`, `STATUS=…`,
//! `STOPPING=1`, `WATCHDOG=1`) to `$NOTIFY_SOCKET`, and the watchdog fed by the engine's progress
//! (DESIGN.md §8), never by a bare timer.
//!
//! No crate: the protocol is one datagram of `KEY=VALUE` lines to a Unix socket, and libsystemd
//! would be a C dependency for it. Everything here is a no-op outside systemd (no `NOTIFY_SOCKET`),
//! so `kiln run` behaves the same in a terminal, a container or a test.

use std::io;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    #[error(
        "NOTIFY_SOCKET `{0}` is neither an absolute path nor an abstract name (@…); kiln speaks only those"
    )]
    UnsupportedAddress(String),
    #[error("WATCHDOG_USEC `{0}` is not a positive number of microseconds")]
    WatchdogUsec(String),
    #[error("WATCHDOG_PID `{0}` is not a process id")]
    WatchdogPid(String),
    #[error("cannot notify systemd at {address}: {source}")]
    Send { address: String, source: io::Error },
}

/// Where systemd listens, taken once at start so children never see the variables.
#[derive(Debug)]
pub struct Notifier {
    target: Option<(SocketAddr, String)>,
    watchdog: Option<Duration>,
    /// STOPPING=1 goes out once, from whichever of the signal's watcher and the daemon's exit
    /// path gets there first (a runtime shutting down may never poll the watcher).
    stopping_sent: AtomicBool,
}

/// `$NOTIFY_SOCKET` as sd_notify reads it: an absolute path, or `@name` for the abstract namespace.
pub fn parse_notify_socket(value: &str) -> Result<SocketAddr, NotifyError> {
    if let Some(name) = value.strip_prefix('@') {
        use std::os::linux::net::SocketAddrExt;
        return SocketAddr::from_abstract_name(name.as_bytes())
            .map_err(|_| NotifyError::UnsupportedAddress(value.to_owned()));
    }
    if value.starts_with('/') {
        return SocketAddr::from_pathname(Path::new(value))
            .map_err(|_| NotifyError::UnsupportedAddress(value.to_owned()));
    }
    // systemd ≥ 254 also offers vsock:…; a unit on this host never hands kiln one.
    Err(NotifyError::UnsupportedAddress(value.to_owned()))
}

/// The watchdog interval, decided as systemd's `sd_watchdog_enabled()` decides it
/// (src/libsystemd/sd-daemon/sd-daemon.c): no `WATCHDOG_USEC` → no watchdog; a value that is not a
/// positive number below USEC_INFINITY → an error; `WATCHDOG_PID` set to another process's id → the
/// watchdog is that process's, not ours (a wrapper that exec'd us without unsetting it); unset →
/// ours.
pub fn watchdog_interval(
    usec: Option<&str>,
    pid: Option<&str>,
    own_pid: u32,
) -> Result<Option<Duration>, NotifyError> {
    let Some(usec) = usec else { return Ok(None) };
    let micros: u64 = usec
        .trim()
        .parse()
        .ok()
        .filter(|&u| u > 0 && u != u64::MAX)
        .ok_or_else(|| NotifyError::WatchdogUsec(usec.to_owned()))?;
    if let Some(pid) = pid {
        let pid: u32 = pid
            .trim()
            .parse()
            .ok()
            .filter(|&p| p > 0)
            .ok_or_else(|| NotifyError::WatchdogPid(pid.to_owned()))?;
        if pid != own_pid {
            return Ok(None);
        }
    }
    Ok(Some(Duration::from_micros(micros)))
}

impl Notifier {
    /// Reads `NOTIFY_SOCKET`, `WATCHDOG_USEC` and `WATCHDOG_PID`, then removes them from the
    /// environment, as sd_watchdog_enabled(unset_environment=1) does: git, ssh and the other
    /// programs kiln starts must not take systemd's watchdog or socket for theirs.
    ///
    /// # Safety
    ///
    /// Changes the process environment: call it while the process has one thread (before the
    /// async runtime starts), as `std::env::remove_var` requires.
    pub unsafe fn from_env() -> (Self, Vec<NotifyError>) {
        let mut problems = Vec::new();
        let socket = std::env::var("NOTIFY_SOCKET").ok();
        let usec = std::env::var("WATCHDOG_USEC").ok();
        let pid = std::env::var("WATCHDOG_PID").ok();
        for key in ["NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"] {
            // SAFETY: the caller guarantees no other thread reads or writes the environment.
            unsafe { std::env::remove_var(key) };
        }
        let target = socket.and_then(|s| match parse_notify_socket(&s) {
            Ok(addr) => Some((addr, s)),
            Err(e) => {
                problems.push(e);
                None
            }
        });
        let watchdog = match watchdog_interval(usec.as_deref(), pid.as_deref(), std::process::id())
        {
            Ok(w) => w,
            Err(e) => {
                problems.push(e);
                None
            }
        };
        (
            Self {
                target,
                watchdog,
                stopping_sent: AtomicBool::new(false),
            },
            problems,
        )
    }

    /// A notifier for a socket named explicitly (tests, or a caller that read the variables itself).
    pub fn new(socket: Option<&str>, watchdog: Option<Duration>) -> Result<Self, NotifyError> {
        let target = socket
            .map(|s| parse_notify_socket(s).map(|a| (a, s.to_owned())))
            .transpose()?;
        Ok(Self {
            target,
            watchdog,
            stopping_sent: AtomicBool::new(false),
        })
    }

    /// Not under systemd (or not a notify unit): every call is a no-op.
    pub fn disabled() -> Self {
        Self {
            target: None,
            watchdog: None,
            stopping_sent: AtomicBool::new(false),
        }
    }

    pub fn enabled(&self) -> bool {
        self.target.is_some()
    }

    /// `WatchdogSec=` of the unit, when it is ours.
    pub fn watchdog(&self) -> Option<Duration> {
        self.watchdog.filter(|_| self.target.is_some())
    }

    /// Sends one datagram of newline-separated assignments; `Ok(false)` when not under systemd.
    pub fn notify(&self, assignments: &[(&str, &str)]) -> Result<bool, NotifyError> {
        let Some((addr, name)) = &self.target else {
            return Ok(false);
        };
        let mut message = String::new();
        for (key, value) in assignments {
            // A newline would start another assignment: STATUS= text comes from error messages.
            let value = value.replace('\n', " ");
            message.push_str(key);
            message.push('=');
            message.push_str(&value);
            message.push('\n');
        }
        let send = || -> io::Result<()> {
            let socket = UnixDatagram::unbound()?;
            socket.send_to_addr(message.as_bytes(), addr)?;
            Ok(())
        };
        send().map_err(|source| NotifyError::Send {
            address: name.clone(),
            source,
        })?;
        Ok(true)
    }

    /// `READY=1` with a status line.
    pub fn ready(&self, status: &str) {
        self.log_failure(self.notify(&[("READY", "1"), ("STATUS", status)]));
    }

    /// `STOPPING=1`: systemd shows "deactivating" and stops expecting watchdog pings.
    pub fn stopping(&self, status: &str) {
        if !self.stopping_sent.swap(true, Ordering::SeqCst) {
            self.log_failure(self.notify(&[("STOPPING", "1"), ("STATUS", status)]));
        }
    }

    pub fn status(&self, status: &str) {
        self.log_failure(self.notify(&[("STATUS", status)]));
    }

    fn log_failure(&self, result: Result<bool, NotifyError>) {
        if let Err(e) = result {
            tracing::warn!(error = %e, "systemd notification lost");
        }
    }
}

/// When the engine last made progress: a cycle began or ended, a step said something, a long wait
/// polled. Cheap to clone and to touch (one relaxed store); read by the watchdog relay.
#[derive(Debug, Clone)]
pub struct Liveness {
    origin: Instant,
    /// Milliseconds after `origin` until which the engine counts as alive without another touch,
    /// less the watchdog's allowance: a touch stores "now", an announced idle wait stores its end.
    /// Several tasks may store at once; their clocks differ by less than the unit.
    until_ms: Arc<AtomicU64>,
}

impl Default for Liveness {
    fn default() -> Self {
        Self::new()
    }
}

impl Liveness {
    pub fn new() -> Self {
        Self {
            origin: Instant::now(),
            until_ms: Arc::new(AtomicU64::new(0)),
        }
    }

    fn ms(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.origin).as_millis()).unwrap_or(u64::MAX)
    }

    /// The engine made progress now. This also ends an announced idle wait: a cycle woken early
    /// (a webhook) that then hangs is caught one watchdog interval later, not after the poll
    /// interval it would have slept.
    pub fn touch(&self) {
        self.until_ms
            .store(self.ms(Instant::now()), Ordering::Relaxed);
    }

    /// The engine is about to wait, idle, for at most `wait` (the poll timer): it counts as alive
    /// until that wait is over, so a poll interval longer than the watchdog is no false alarm, while
    /// a wait that overruns its own end still is.
    pub fn idle_for(&self, wait: Duration) {
        self.until_ms
            .store(self.ms(Instant::now() + wait), Ordering::Relaxed);
    }

    /// How long ago the engine was last known alive (zero inside an announced idle wait).
    pub fn silent_for(&self, now: Instant) -> Duration {
        let until = self.until_ms.load(Ordering::Relaxed);
        Duration::from_millis(self.ms(now).saturating_sub(until))
    }
}

tokio::task_local! {
    static CURRENT: Liveness;
}

/// Runs `fut` with `liveness` as the one [`progress`] touches: the engine scopes each cluster's
/// task, so an adapter's poll loop (a Proxmox task, a drain) counts as progress without a handle.
pub async fn with_liveness<F: std::future::Future>(liveness: Liveness, fut: F) -> F::Output {
    CURRENT.scope(liveness, fut).await
}

/// A long wait polled once more: progress for the watchdog, when inside [`with_liveness`].
pub fn progress() {
    let _ = CURRENT.try_with(Liveness::touch);
}

/// Whether to send `WATCHDOG=1` now: the engine was alive within the watchdog interval.
pub fn should_feed(liveness: &Liveness, watchdog: Duration, now: Instant) -> bool {
    liveness.silent_for(now) < watchdog
}

/// Feeds systemd's watchdog every half interval (as sd_watchdog_enabled's callers are told to)
/// while the engine was alive within the interval; a hung engine stops the pings and systemd
/// restarts kiln. Returns at once when there is no watchdog.
pub async fn relay_watchdog(notifier: Arc<Notifier>, liveness: Liveness) {
    let Some(watchdog) = notifier.watchdog() else {
        return;
    };
    let mut tick = tokio::time::interval((watchdog / 2).max(Duration::from_millis(1)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut starving = false;
    loop {
        tick.tick().await;
        let now = Instant::now();
        if should_feed(&liveness, watchdog, now) {
            if starving {
                tracing::info!("the engine makes progress again; feeding the watchdog");
                notifier.status("reconciling");
                starving = false;
            }
            notifier.log_failure(notifier.notify(&[("WATCHDOG", "1")]));
        } else if !starving {
            starving = true;
            let silent =
                humantime::format_duration(Duration::from_secs(liveness.silent_for(now).as_secs()));
            tracing::error!(
                %silent,
                "the engine made no progress; no longer feeding systemd's watchdog, which will restart kiln"
            );
            notifier.status(&format!("engine stalled: no progress for {silent}"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_watchdog_is_read_as_sd_watchdog_enabled_reads_it() {
        let me = 4242;
        assert_eq!(watchdog_interval(None, None, me).unwrap(), None);
        assert_eq!(
            watchdog_interval(Some("300000000"), None, me).unwrap(),
            Some(Duration::from_secs(300))
        );
        assert_eq!(
            watchdog_interval(Some("300000000"), Some("4242"), me).unwrap(),
            Some(Duration::from_secs(300))
        );
        // Meant for another process (a wrapper's): not ours, and no error.
        assert_eq!(
            watchdog_interval(Some("300000000"), Some("17"), me).unwrap(),
            None
        );
        for bad in ["0", "-5", "soon", "18446744073709551615", ""] {
            assert!(
                watchdog_interval(Some(bad), None, me).is_err(),
                "WATCHDOG_USEC={bad}"
            );
        }
        assert!(watchdog_interval(Some("1000"), Some("zero"), me).is_err());
        assert!(watchdog_interval(Some("1000"), Some("0"), me).is_err());
    }

    #[test]
    fn notify_socket_is_a_path_or_an_abstract_name() {
        assert!(parse_notify_socket("/run/systemd/notify").is_ok());
        use std::os::linux::net::SocketAddrExt;
        let a = parse_notify_socket("@kiln/notify").unwrap();
        assert_eq!(a.as_abstract_name(), Some(&b"kiln/notify"[..]));
        for bad in ["relative/notify", "vsock:2:1234", ""] {
            assert!(parse_notify_socket(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn without_a_socket_nothing_is_sent() {
        let n = Notifier::new(None, Some(Duration::from_secs(1))).unwrap();
        assert!(!n.notify(&[("READY", "1")]).unwrap());
        assert_eq!(n.watchdog(), None, "no socket: no watchdog either");
    }

    #[test]
    fn datagrams_reach_a_path_socket_and_an_abstract_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let server = UnixDatagram::bind(&path).unwrap();
        let n = Notifier::new(Some(path.to_str().unwrap()), None).unwrap();
        assert!(
            n.notify(&[("READY", "1"), ("STATUS", "two\nlines")])
                .unwrap()
        );
        let mut buf = [0u8; 256];
        let len = server.recv(&mut buf).unwrap();
        assert_eq!(&buf[..len], b"READY=1\nSTATUS=two lines\n");

        use std::os::linux::net::SocketAddrExt;
        let name = format!("kiln-test-notify-{}", std::process::id());
        let addr = SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let server = UnixDatagram::bind_addr(&addr).unwrap();
        let n = Notifier::new(Some(&format!("@{name}")), None).unwrap();
        assert!(n.notify(&[("WATCHDOG", "1")]).unwrap());
        let len = server.recv(&mut buf).unwrap();
        assert_eq!(&buf[..len], b"WATCHDOG=1\n");
    }

    #[test]
    fn the_watchdog_is_fed_only_while_the_engine_was_alive_within_the_interval() {
        let live = Liveness::new();
        let watchdog = Duration::from_secs(300);
        let t0 = Instant::now();
        live.touch();
        assert!(should_feed(&live, watchdog, t0 + Duration::from_secs(299)));
        assert!(!should_feed(&live, watchdog, t0 + Duration::from_secs(301)));
        // A touch through a clone counts: the engine holds one, the relay another.
        let engine = live.clone();
        std::thread::sleep(Duration::from_millis(5));
        engine.touch();
        assert!(should_feed(&live, watchdog, t0 + Duration::from_secs(300)));
        // An announced idle wait longer than the watchdog keeps it fed to the wait's end, not after.
        live.idle_for(Duration::from_secs(3600));
        assert!(should_feed(&live, watchdog, t0 + Duration::from_secs(3600)));
        assert!(!should_feed(
            &live,
            watchdog,
            t0 + Duration::from_secs(3600 + 301)
        ));
        // Woken early, the engine works again: the idle promise no longer covers it.
        live.touch();
        assert!(!should_feed(&live, watchdog, t0 + Duration::from_secs(600)));
    }

    #[tokio::test]
    async fn progress_touches_the_scoped_liveness_only() {
        let live = Liveness::new();
        let later = Instant::now() + Duration::from_secs(10);
        assert_eq!(live.silent_for(later).as_secs(), 10);
        progress(); // outside any scope: nothing to touch, no panic
        with_liveness(live.clone(), async {
            tokio::time::sleep(Duration::from_millis(20)).await;
            progress();
        })
        .await;
        assert!(live.silent_for(later) < Duration::from_secs(10));
    }
}
