//! `kiln demo --serve` through the real binary: the demo converges, prints one kubectl line per
//! cluster with a kubeconfig it wrote into the demo folder (mode 0600), the real kubectl lists that
//! cluster's nodes Ready at its VIP while the demo waits, and Ctrl-C (SIGINT) ends it with exit 0.

use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::kubectl_cli::Kubectl;

/// Kills the demo if the test fails before it stopped it.
struct Running(std::process::Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn demo_serve_keeps_the_lab_up_for_kubectl_until_ctrl_c() {
    let _addresses = super::DEMO_ADDRESSES
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    let kubectl_binary = crate::kubectl_cli::kubectl_binary();
    let cwd = tempfile::tempdir().unwrap();
    let mut child = Running(
        Command::new(env!("CARGO_BIN_EXE_kiln"))
            .args(["demo", "--serve"])
            .current_dir(cwd.path())
            .env("KILN_REFERENCE_SCHEMAS", super::schema_dir())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("running kiln demo --serve"),
    );
    let (tx, rx) = mpsc::channel::<String>();
    let stdout = child.0.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let stderr = child.0.stderr.take().unwrap();
    let err_log = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    {
        let err_log = err_log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let mut log = err_log.lock().unwrap();
                log.push_str(&line);
                log.push('\n');
            }
        });
    }

    // The printed lines, until one kubectl line per demo cluster.
    let mut printed = String::new();
    let mut kubeconfigs: Vec<(String, PathBuf)> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(180);
    while kubeconfigs.len() < 2 {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = rx.recv_timeout(left).unwrap_or_else(|_| {
            panic!(
                "no kubectl line for each cluster within 180 s\nstdout:\n{printed}\nstderr:\n{}",
                err_log.lock().unwrap()
            )
        });
        printed.push_str(&line);
        printed.push('\n');
        if let Some(path) = line
            .trim()
            .strip_prefix("kubectl --kubeconfig ")
            .and_then(|rest| rest.strip_suffix(" get nodes"))
        {
            let path = PathBuf::from(path);
            let cluster = path
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_suffix(".kubeconfig"))
                .unwrap_or_else(|| panic!("not a <cluster>.kubeconfig: {line}"))
                .to_owned();
            kubeconfigs.push((cluster, path));
        }
    }
    assert!(printed.contains("until Ctrl-C"), "{printed}");
    let demo_dir = std::fs::canonicalize(cwd.path().join("kiln-demo")).unwrap();
    let clusters: Vec<&str> = kubeconfigs.iter().map(|(c, _)| c.as_str()).collect();
    assert_eq!(clusters, ["production", "staging"], "{printed}");

    for (cluster, path) in &kubeconfigs {
        assert_eq!(
            std::fs::canonicalize(path.parent().unwrap()).unwrap(),
            demo_dir,
            "{cluster}'s kubeconfig is not in the demo folder"
        );
        let mode = std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{cluster}'s kubeconfig mode");
        // kubectl as the printed line runs it (its own discovery cache, so nothing is shared).
        let scratch = tempfile::tempdir().unwrap();
        let k = Kubectl::with_binary(
            kubectl_binary.clone(),
            scratch.path(),
            &std::fs::read_to_string(path).unwrap(),
        );
        let nodes = k.ok(&["get", "nodes"]);
        let rows: Vec<Vec<&str>> = nodes
            .lines()
            .skip(1)
            .map(|l| l.split_whitespace().collect())
            .collect();
        assert!(!rows.is_empty(), "{cluster}: no nodes\n{nodes}");
        for row in &rows {
            assert!(row[0].starts_with(&format!("{cluster}-")), "{nodes}");
            assert_eq!(row[1], "Ready", "{cluster}: {nodes}");
        }
    }

    // Ctrl-C: the demo stops by itself, exit 0.
    let pid = child.0.id().to_string();
    let sent = Command::new("kill").args(["-INT", &pid]).status().unwrap();
    assert!(sent.success());
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.0.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "kiln demo --serve did not stop on SIGINT:\n{}",
            err_log.lock().unwrap()
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(status.code(), Some(0), "{}", err_log.lock().unwrap());
}
