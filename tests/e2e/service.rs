//! The service as systemd runs it (issue 28, DESIGN.md §8): the unit's hardening judged by
//! `systemd-analyze` itself, and `kiln run` speaking systemd's notify protocol to a socket standing in
//! for systemd — READY with the forge down, the watchdog fed, STOPPING on SIGTERM.

use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::support::kiln;

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn systemd_analyze(args: &[&str]) -> std::process::Output {
    Command::new("systemd-analyze")
        .args(args)
        .current_dir(repo_root())
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run systemd-analyze ({e}): install Debian's `systemd` package \
                 (scripts/setup-test-env does it when it is missing)"
            )
        })
}

/// "→ Overall exposure level for kiln.service: 1.2 OK 🙂" → 1.2
fn overall_exposure(report: &str) -> Option<f64> {
    let line = report
        .lines()
        .find(|l| l.contains("Overall exposure level for kiln.service:"))?;
    let after = line.split("kiln.service:").nth(1)?;
    after.split_whitespace().next()?.parse().ok()
}

#[test]
fn the_unit_is_hardened_to_an_exposure_of_at_most_2() {
    let out = systemd_analyze(&[
        "security",
        "--offline=true",
        "--no-pager",
        "systemd/kiln.service",
    ]);
    let report = String::from_utf8_lossy(&out.stdout);
    let exposure = overall_exposure(&report).unwrap_or_else(|| {
        panic!(
            "no overall exposure in systemd-analyze's report:\n{report}\n{}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    assert!(
        exposure <= 2.0,
        "systemd/kiln.service exposure {exposure} > 2.0:\n{report}"
    );
}

#[test]
fn the_unit_parses_without_a_complaint_and_says_what_issue_28_asks() {
    // `verify` judges every line; the binary and the man page are not installed here, which is all
    // it may say.
    let out = systemd_analyze(&["verify", "systemd/kiln.service"]);
    let said =
        String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
    let complaints: Vec<&str> = said
        .lines()
        .filter(|l| !l.contains("/usr/bin/kiln is not executable"))
        .filter(|l| !l.contains("man kiln(1)"))
        .filter(|l| !l.trim().is_empty())
        .collect();
    assert!(
        complaints.is_empty(),
        "systemd-analyze verify complains:\n{said}"
    );
    let unit = std::fs::read_to_string(repo_root().join("systemd/kiln.service")).unwrap();
    for line in [
        "Type=notify",
        "NotifyAccess=main",
        "WatchdogSec=5min",
        "ExecStart=/usr/bin/kiln run --config /etc/kiln/kiln.toml",
        "StateDirectory=kiln",
        "LoadCredential=proxmox-token:/etc/kiln/credentials/proxmox-token",
    ] {
        assert!(
            unit.lines().any(|l| l.starts_with(line)),
            "the unit lacks `{line}`"
        );
    }
    // Every credential the example config names (a relative *_file) is one the unit loads.
    let example = std::fs::read_to_string(repo_root().join("examples/kiln.toml")).unwrap();
    for l in example.lines().filter(|l| !l.trim_start().starts_with('#')) {
        let Some((key, value)) = l.split_once(" = ") else {
            continue;
        };
        let name = value.trim().trim_matches('"');
        if key.trim().ends_with("_file") && !name.starts_with('/') {
            assert!(
                unit.contains(&format!(
                    "LoadCredential={name}:/etc/kiln/credentials/{name}\n"
                )),
                "examples/kiln.toml names credential `{name}` ({}), which the unit does not load",
                key.trim()
            );
        }
    }
}

/// A socket standing in for systemd's notify socket: every datagram, in order.
fn fake_systemd(dir: &Path) -> (PathBuf, mpsc::Receiver<String>) {
    let path = dir.join("notify.sock");
    let socket = UnixDatagram::bind(&path).unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 4096];
        while let Ok(n) = socket.recv(&mut buf) {
            if tx
                .send(String::from_utf8_lossy(&buf[..n]).into_owned())
                .is_err()
            {
                return;
            }
        }
    });
    (path, rx)
}

/// The next datagram that contains `what`, with everything received before it.
fn wait_for(rx: &mpsc::Receiver<String>, what: &str, limit: Duration, log: &Path) -> Vec<String> {
    let deadline = Instant::now() + limit;
    let mut seen = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(m) => {
                let found = m.contains(what);
                seen.push(m);
                if found {
                    return seen;
                }
            }
            Err(_) => panic!(
                "no `{what}` from kiln within {limit:?}; it sent {seen:?}; its log:\n{}",
                std::fs::read_to_string(log).unwrap_or_default()
            ),
        }
    }
}

#[test]
fn kiln_run_is_ready_with_the_forge_down_feeds_the_watchdog_and_says_stopping() {
    let dir = tempfile::tempdir().unwrap();
    // A forge that is down: a loopback port nobody listens on any more.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let config = dir.path().join("kiln.toml");
    std::fs::write(
        &config,
        format!(
            r#"state_dir = "{state}"
[git]
url = "https://127.0.0.1:{port}/infra/gitops.git"
poll_interval = "1s"
[proxmox]
backend = "simulated"
[talos]
backend = "simulated"
[secrets]
backend = "file"
"#,
            state = dir.path().join("state").display()
        ),
    )
    .unwrap();
    let (socket, rx) = fake_systemd(dir.path());
    let log = dir.path().join("kiln.stderr");
    let mut child = kiln()
        .args(["run", "--config"])
        .arg(&config)
        .env("NOTIFY_SOCKET", &socket)
        // 2 s: pings every second while the engine keeps trying the forge.
        .env("WATCHDOG_USEC", "2000000")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let ready = wait_for(&rx, "READY=1", Duration::from_secs(30), &log);
    let ready = ready.last().unwrap();
    assert!(
        ready.contains("STATUS=reconciling https://127.0.0.1:"),
        "{ready}"
    );
    // The engine fails its cycles on Git and goes on: that is progress, so the watchdog is fed, more
    // than once (two pings span more than one watchdog half-period).
    let pings = wait_for(&rx, "WATCHDOG=1", Duration::from_secs(10), &log);
    assert!(!pings.iter().any(|m| m.contains("stalled")), "{pings:?}");
    wait_for(&rx, "WATCHDOG=1", Duration::from_secs(10), &log);
    assert!(
        child.try_wait().unwrap().is_none(),
        "kiln exited while the forge was down:\n{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        text.contains("git"),
        "the forge being down is logged:\n{text}"
    );

    // SIGTERM: STOPPING=1, then a clean exit.
    let pid = child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    wait_for(&rx, "STOPPING=1", Duration::from_secs(10), &log);
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "kiln did not stop after SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(
        status.success(),
        "kiln exited {status} after SIGTERM:\n{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
}

/// A Vault that accepts connections and never answers (a hung server, a firewall that swallows
/// replies) must not hold READY back either: kiln's check of the store at start only warns, and its
/// client waits 30 s for an answer.
#[test]
fn kiln_run_is_ready_while_vault_does_not_answer() {
    let dir = tempfile::tempdir().unwrap();
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let vault_port = silent.local_addr().unwrap().port();
    // Accepted connections are kept open and never read: the client waits for its answer.
    let held = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let keep = held.clone();
    std::thread::spawn(move || {
        for conn in silent.incoming().flatten() {
            keep.lock().unwrap().push(conn);
        }
    });
    let forge = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let token = dir.path().join("vault-token");
    std::fs::write(&token, "s.not-a-real-token\n").unwrap();
    let config = dir.path().join("kiln.toml");
    std::fs::write(
        &config,
        format!(
            r#"state_dir = "{state}"
[git]
url = "https://127.0.0.1:{forge}/infra/gitops.git"
poll_interval = "1s"
[proxmox]
backend = "simulated"
[talos]
backend = "simulated"
[secrets]
backend = "vault"
addr = "http://127.0.0.1:{vault_port}"
token_file = "{token}"
"#,
            state = dir.path().join("state").display(),
            token = token.display()
        ),
    )
    .unwrap();
    let (socket, rx) = fake_systemd(dir.path());
    let log = dir.path().join("kiln.stderr");
    let started = Instant::now();
    let mut child = kiln()
        .args(["run", "--config"])
        .arg(&config)
        .env("NOTIFY_SOCKET", &socket)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    wait_for(&rx, "READY=1", Duration::from_secs(10), &log);
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "READY took {:?}",
        started.elapsed()
    );
    let _ = child.kill();
    let _ = child.wait();
    drop(held);
}

#[test]
fn kiln_run_once_never_tells_systemd_anything() {
    let dir = tempfile::tempdir().unwrap();
    let remote = crate::gitrepo::Repos::empty();
    remote.write("README.md", "fleet\n");
    remote.commit_and_push("empty fleet");
    let config = dir.path().join("kiln.toml");
    std::fs::write(
        &config,
        format!(
            r#"state_dir = "{state}"
[git]
url = "{bare}"
[proxmox]
backend = "simulated"
[talos]
backend = "simulated"
[secrets]
backend = "file"
"#,
            state = dir.path().join("state").display(),
            bare = remote.bare.display(),
        ),
    )
    .unwrap();
    let (socket, rx) = fake_systemd(dir.path());
    let out = kiln()
        .args(["run", "--once", "--config"])
        .arg(&config)
        .env("NOTIFY_SOCKET", &socket)
        .env("WATCHDOG_USEC", "2000000")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // A datagram socket keeps order: whatever kiln sent arrives before this marker.
    UnixDatagram::unbound()
        .unwrap()
        .send_to(b"MARKER=1\n", &socket)
        .unwrap();
    let sent = wait_for(
        &rx,
        "MARKER=1",
        Duration::from_secs(5),
        Path::new("/dev/null"),
    );
    assert_eq!(sent, ["MARKER=1\n"], "`run --once` notified systemd");
}

#[test]
fn the_daemon_only_warns_when_proxmox_does_not_answer_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let remote = crate::gitrepo::Repos::empty();
    remote.write("README.md", "fleet\n");
    remote.commit_and_push("empty fleet");
    // A Proxmox that is down: a loopback port nobody listens on any more.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let token = dir.path().join("pve-token");
    std::fs::write(&token, "00000000-0000-0000-0000-000000000000\n").unwrap();
    let config = dir.path().join("kiln.toml");
    std::fs::write(
        &config,
        format!(
            r#"state_dir = "{state}"
[git]
url = "{bare}"
poll_interval = "1s"
[proxmox]
url = "https://127.0.0.1:{port}"
token_id = "kiln@pve!reconciler"
token_secret_file = "{token}"
insecure = true
[secrets]
backend = "file"
"#,
            state = dir.path().join("state").display(),
            bare = remote.bare.display(),
            token = token.display(),
        ),
    )
    .unwrap();
    let (socket, rx) = fake_systemd(dir.path());
    let log = dir.path().join("kiln.stderr");
    let mut child = kiln()
        .args(["run", "--config"])
        .arg(&config)
        .env("NOTIFY_SOCKET", &socket)
        .env("WATCHDOG_USEC", "2000000")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    wait_for(&rx, "READY=1", Duration::from_secs(30), &log);
    // Past the preflight: the engine's cycles run (and feed the watchdog) with Proxmox still down.
    let deadline = Instant::now() + Duration::from_secs(60);
    while !std::fs::read_to_string(&log)
        .unwrap_or_default()
        .contains("Proxmox does not answer")
    {
        assert!(
            child.try_wait().unwrap().is_none(),
            "kiln stopped because Proxmox did not answer:\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        assert!(
            Instant::now() < deadline,
            "no preflight warning:\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    wait_for(&rx, "WATCHDOG=1", Duration::from_secs(10), &log);
    assert!(child.try_wait().unwrap().is_none(), "kiln exited");
    // The cycle under way retries the listing before it ends: no waiting for that here.
    child.kill().unwrap();
    child.wait().unwrap();
}

#[tokio::test]
async fn the_daemon_still_stops_on_a_refused_permission() {
    let c = crate::fixture::ClusterFixture::new("svcperm", 1, 0);
    let world = crate::support::World::start(vec![c.clone()]).await;
    let mut acl = crate::support::least_privilege_acl();
    let vms = acl.iter_mut().find(|(p, _)| p == "/vms").unwrap();
    vms.1.retain(|p| *p != "VM.Config.Cloudinit");
    world.pve.set_acl(&acl);
    let mut daemon = world.spawn_daemon(None);
    let status = daemon.wait_exit(Duration::from_secs(60));
    assert!(
        !status.success(),
        "the daemon went on without VM.Config.Cloudinit"
    );
    let log = daemon.stderr_text();
    assert!(
        log.contains("VM.Config.Cloudinit"),
        "the daemon's refusal does not name the privilege:\n{log}"
    );
}
