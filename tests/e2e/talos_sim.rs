//! `kiln sim talos` as a child process (the real binary, real gRPC and TLS), one loopback address per
//! node, validating every config against the official Talos schemas, killed on drop.

use std::io::{BufRead, BufReader};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// The reference schemas (`KILN_REFERENCE_SCHEMAS`, else `<crate>/../shared/schemas`); a missing folder
/// fails the test here, loudly, rather than letting the simulator fall back to its built-in check.
pub fn reference_schemas() -> PathBuf {
    let dir = std::env::var_os("KILN_REFERENCE_SCHEMAS")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/schemas"));
    let probe = dir.join("talos/config-v1.13.schema.json");
    assert!(
        probe.is_file(),
        "the official Talos schemas are needed at {} (set KILN_REFERENCE_SCHEMAS to the shared schemas \
         folder; scripts/test does)",
        probe.display()
    );
    dir
}

pub struct TalosSim {
    /// `None` for a world without nodes: `--listen` needs at least one address.
    child: Option<Child>,
    pub dump_dir: PathBuf,
    pub log: PathBuf,
}

impl TalosSim {
    /// Serves every `--listen` spec (`IP:50000[,version=…][,platform=…]`, one per node) and waits until
    /// each one listens; `args` are more `kiln sim talos` options (`--learner-delay`, `--refuse`).
    pub fn start_with_args(listen: &[String], dir: &Path, args: &[String]) -> Self {
        let ips = listen;
        let dump_dir = dir.join("talos-dump");
        let log = dir.join("talos-sim.log");
        if listen.is_empty() {
            std::fs::write(&log, "").unwrap();
            return Self {
                child: None,
                dump_dir,
                log,
            };
        }
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_kiln"));
        cmd.args(["sim", "talos", "--dump-dir"]).arg(&dump_dir);
        cmd.args(args);
        cmd.arg("--listen");
        for spec in listen {
            cmd.arg(spec);
        }
        let mut child = cmd
            .env("KILN_REFERENCE_SCHEMAS", reference_schemas())
            // The bootstrap count is read from the info lines: never let an outer RUST_LOG hide them.
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("starting `kiln sim talos`");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut sim = Self {
            child: Some(child),
            dump_dir,
            log,
        };
        let mut listening = 0;
        while listening < ips.len() {
            match rx.recv_timeout(Duration::from_secs(30)) {
                Ok(line) if line.contains("listening on") => listening += 1,
                Ok(_) => {}
                Err(_) => panic!(
                    "`kiln sim talos` did not listen on all of {ips:?} ({listening} did): {}",
                    sim.log_text()
                ),
            }
        }
        assert!(
            sim.child.as_mut().unwrap().try_wait().unwrap().is_none(),
            "`kiln sim talos` exited: {}",
            sim.log_text()
        );
        sim
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Bootstraps the simulator accepted (one line each; see `sim::talos::handlers::bootstrap`).
    pub fn bootstraps(&self) -> usize {
        self.log_text()
            .lines()
            .filter(|l| l.contains("etcd bootstrapped"))
            .count()
    }

    /// What the simulator refused as cluster-breaking (a second etcd cluster and the like).
    pub fn violations(&self) -> Vec<String> {
        self.log_text()
            .lines()
            .filter(|l| l.contains("SIMULATED CLUSTER BROKEN"))
            .map(str::to_owned)
            .collect()
    }

    /// The machine config a node accepted last, as received.
    pub fn dumped_config(&self, ip: Ipv4Addr) -> Option<String> {
        std::fs::read_to_string(self.dump_dir.join(format!("{ip}.yaml"))).ok()
    }
}

impl Drop for TalosSim {
    fn drop(&mut self) {
        if let Some(child) = &mut self.child {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
