//! Issue 30: etcd backups through the binary, to a folder and to S3 (moto's server, PyPI, pinned),
//! from the Talos simulator's etcd (a real bbolt file at the cluster's revision).
//!
//! One world, two one-node clusters: `bkdir` backs up to a folder, `bks3` to `s3://…` on moto. The
//! daemon brings both up and takes each one's first scheduled snapshot (a cluster never backed up
//! is due at once); then, with the daemon stopped, `kiln backup now` three times with `keep: 2`
//! leaves exactly two verified snapshots of each. Every snapshot decrypts with the operator's
//! identity through the `age` CLI (Debian's, an outside implementation), is an etcd database
//! (`backup::bbolt`) at the manifest's revision and matches its manifest's hashes; no `.age` holds
//! PEM text; a truncated and an altered snapshot are told apart by `kiln backup list`.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::fixture::ClusterFixture;
use crate::support::{World, kiln};

const BUCKET: &str = "kiln-e2e";

/// moto's S3 server on 127.0.0.1, port 0, with one bucket; killed on drop.
struct Moto {
    child: Child,
    url: String,
}

impl Moto {
    fn start() -> Self {
        let python = crate::bao::venv().join("bin/python");
        assert!(
            python.exists(),
            "no Python at {}: run scripts/setup-test-env (or set KILN_TEST_VENV)",
            python.display()
        );
        let script = format!(
            r#"
import sys
try:
    from moto.server import ThreadedMotoServer
    import boto3
except ImportError as e:
    print("MISSING moto[server] (pinned in scripts/test-requirements.txt; run scripts/setup-test-env):", e, flush=True)
    sys.exit(3)
s = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
s.start()
host, port = s.get_host_and_port()
boto3.client("s3", endpoint_url=f"http://{{host}}:{{port}}", region_name="us-east-1",
             aws_access_key_id="kiln", aws_secret_access_key="kiln-secret").create_bucket(Bucket="{BUCKET}")
print(f"LISTENING http://{{host}}:{{port}}", flush=True)
sys.stdin.read()
"#
        );
        let mut child = Command::new(python)
            .args(["-c", &script])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting moto's server");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let url = match line.trim().strip_prefix("LISTENING ") {
            Some(url) => url.to_owned(),
            None => {
                let _ = child.kill();
                panic!("moto's server did not start: {line}");
            }
        };
        Self { child, url }
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn with_backup(c: &ClusterFixture, destination: &str, recipient: &str) -> String {
    format!(
        "{}  backup:\n    schedule: 6h\n    keep: 2\n    destination: {destination}\n    ageRecipients: [\"{recipient}\"]\n",
        c.yaml()
    )
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

fn list_json(world: &World, cluster: &str) -> (crate::support::Outcome, Vec<Value>) {
    let mut cmd = kiln();
    cmd.args(["backup", "list", cluster, "--format", "json", "--config"])
        .arg(&world.config);
    let out = world.run_command(cmd);
    let entries = serde_json::from_str::<Vec<Value>>(&out.stdout).unwrap_or_default();
    (out, entries)
}

fn backup_config(moto: &Moto, keys: &Path) -> kiln::config::BackupConfig {
    kiln::config::BackupConfig {
        s3_endpoint: Some(moto.url.clone()),
        s3_region: "us-east-1".into(),
        s3_access_key_id_file: Some(keys.join("s3-id")),
        s3_secret_access_key_file: Some(keys.join("s3-secret")),
        s3_allow_http: true,
        s3_ca_file: None,
    }
}

/// Decrypts `age_bytes` with the `age` CLI and checks it against its manifest: hashes, sizes, an
/// etcd database at the manifest's revision, no PEM text in the ciphertext.
fn check_snapshot(age_bytes: &[u8], manifest: &Value, identity: &Path, scratch: &Path) {
    let id = manifest["id"].as_str().unwrap();
    assert_eq!(
        age_bytes.len() as u64,
        manifest["encrypted"]["size"].as_u64().unwrap(),
        "{id}: .age size"
    );
    assert_eq!(
        sha256_hex(age_bytes),
        manifest["encrypted"]["sha256"].as_str().unwrap(),
        "{id}: .age SHA-256"
    );
    assert!(
        !age_bytes.windows(10).any(|w| w == b"-----BEGIN"),
        "{id}: PEM text in the encrypted snapshot"
    );
    let file = scratch.join(format!("{id}.db.age"));
    std::fs::write(&file, age_bytes).unwrap();
    let out = Command::new("age")
        .arg("-d")
        .arg("-i")
        .arg(identity)
        .arg(&file)
        .output()
        .expect("the `age` CLI (Debian's `age`; scripts/setup-test-env installs it)");
    assert!(
        out.status.success(),
        "{id}: age -d failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let plain = out.stdout;
    // The check above means something only if the database has readable text to hide: etcd's
    // keys (`/registry/…`, what holds every Secret of the cluster) are in the plaintext and
    // nowhere in the `.age`.
    let readable = |bytes: &[u8]| bytes.windows(10).any(|w| w == b"/registry/");
    assert!(readable(&plain), "{id}: no etcd key in the plaintext");
    assert!(
        !readable(age_bytes),
        "{id}: etcd's keys readable in the .age"
    );
    assert_eq!(
        plain.len() as u64,
        manifest["plaintext"]["size"].as_u64().unwrap(),
        "{id}: plaintext size"
    );
    assert_eq!(
        sha256_hex(&plain),
        manifest["plaintext"]["sha256"].as_str().unwrap(),
        "{id}: plaintext SHA-256"
    );
    let facts = kiln::backup::bbolt::check(&plain)
        .unwrap_or_else(|e| panic!("{id}: not an etcd database: {e}"));
    assert_eq!(
        facts.revision,
        manifest["revision"].as_i64().unwrap(),
        "{id}: revision"
    );
    assert!(id.ends_with(&format!("-{}", facts.revision)), "{id}");
}

#[tokio::test]
async fn snapshots_on_schedule_and_by_hand_are_encrypted_verified_pruned_and_checked() {
    let moto = Moto::start();
    let dir_c = ClusterFixture::new("bkdir", 1, 0);
    let s3_c = ClusterFixture::new("bks3", 1, 0);
    let world = World::start(vec![dir_c.clone(), s3_c.clone()]).await;

    // The operator's age identity; kiln gets only the recipient.
    let identity = age::x25519::Identity::generate();
    let recipient = identity.to_public().to_string();
    let id_file = world.dir.path().join("operator.agekey");
    std::fs::write(
        &id_file,
        format!(
            "# operator\n{}\n",
            kiln::backup::crypt::identity_to_string(&identity)
        ),
    )
    .unwrap();
    let folder: PathBuf = world.dir.path().join("backups");
    world.push_file(
        &dir_c.path(),
        &with_backup(&dir_c, folder.to_str().unwrap(), &recipient),
        "back bkdir up to a folder",
    );
    world.push_file(
        &s3_c.path(),
        &with_backup(&s3_c, &format!("s3://{BUCKET}/fleet"), &recipient),
        "back bks3 up to S3",
    );
    let keys = world.dir.path().join("s3-keys");
    std::fs::create_dir_all(&keys).unwrap();
    std::fs::write(keys.join("s3-id"), "kiln\n").unwrap();
    std::fs::write(keys.join("s3-secret"), "kiln-secret\n").unwrap();
    let mut toml = std::fs::read_to_string(&world.config).unwrap();
    toml.push_str(&format!(
        "\n[backup]\ns3_endpoint = \"{}\"\ns3_region = \"us-east-1\"\ns3_access_key_id_file = \"{}\"\n\
         s3_secret_access_key_file = \"{}\"\ns3_allow_http = true\n",
        moto.url,
        keys.join("s3-id").display(),
        keys.join("s3-secret").display()
    ));
    // The daemon's API, on a loopback address of bkdir's block, so the list can be read through it.
    let api_ip = dir_c.ip(200);
    let api_port = std::net::TcpListener::bind((api_ip, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let api_token = world.dir.path().join("api-token");
    std::fs::write(&api_token, "backup-e2e-token\n").unwrap();
    toml.push_str(&format!(
        "\n[api]\nlisten = \"{api_ip}:{api_port}\"\ntoken_file = \"{}\"\n",
        api_token.display()
    ));
    std::fs::write(&world.config, toml).unwrap();
    kiln::config::Config::load(&world.config).expect("kiln.toml with [backup] loads");
    let api = format!("http://{api_ip}:{api_port}/api/v1/clusters");
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();

    // The daemon: both clusters come up and each gets its first scheduled snapshot.
    let mut daemon = world.spawn_daemon(None);
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        daemon.assert_running();
        let done = [&dir_c, &s3_c].iter().all(|c| {
            let (_, entries) = list_json(&world, &c.name);
            entries.len() == 1 && entries[0]["state"]["state"] == "verified"
        });
        if done {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no scheduled snapshot of both clusters within 120 s:\n{}",
            daemon.stderr_text()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    // Its status names the snapshot (the next cycle copies the result in).
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (_, json) = world.status_json(Some(&dir_c.name));
        let snap = json
            .as_ref()
            .and_then(|j| crate::checks::status_of(j, &dir_c.name))
            .and_then(|s| s["backup"]["last_snapshot"].as_str().map(str::to_owned));
        if snap.is_some() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the status never named the snapshot: {json:?}"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    // The same list through the daemon's API: the token is needed, the snapshot is there.
    for c in [&dir_c, &s3_c] {
        let url = format!("{api}/{}/backups", c.name);
        let denied = http.get(&url).send().await.unwrap();
        assert_eq!(denied.status(), reqwest::StatusCode::UNAUTHORIZED);
        let got = http
            .get(&url)
            .bearer_auth("backup-e2e-token")
            .send()
            .await
            .unwrap();
        assert_eq!(got.status(), reqwest::StatusCode::OK, "{url}");
        let entries: Vec<Value> = got.json().await.unwrap();
        assert_eq!(entries.len(), 1, "{entries:#?}");
        assert_eq!(entries[0]["state"]["state"], "verified", "{entries:#?}");
    }
    let unknown = http
        .get(format!("{api}/nosuch/backups"))
        .bearer_auth("backup-e2e-token")
        .send()
        .await
        .unwrap();
    assert_eq!(unknown.status(), reqwest::StatusCode::NOT_FOUND);
    // `kiln backup now` while the daemon holds the lock: the daemon is asked and takes it.
    let mut cmd = kiln();
    cmd.args(["backup", "now", &dir_c.name, "--timeout", "90s", "--config"])
        .arg(&world.config);
    let out = world.run_command(cmd);
    assert!(out.success(), "kiln backup now through the daemon:\n{out}");
    assert!(
        out.stderr.contains("asking the running kiln"),
        "it did not go through the daemon:\n{out}"
    );
    let (_, entries) = list_json(&world, &dir_c.name);
    assert_eq!(entries.len(), 2, "{entries:#?}");
    assert!(
        out.stdout.contains(entries[1]["id"].as_str().unwrap()),
        "the reply does not name the new snapshot:\n{out}"
    );
    let term = Command::new("kill")
        .args(["-TERM", &daemon.pid().to_string()])
        .status()
        .unwrap();
    assert!(term.success());
    assert!(daemon.wait_exit(Duration::from_secs(30)).success());

    // By hand, three times each, keep 2: exactly two verified snapshots remain.
    for c in [&dir_c, &s3_c] {
        for _ in 0..3 {
            let mut cmd = kiln();
            cmd.args(["backup", "now", &c.name, "--config"])
                .arg(&world.config);
            let out = world.run_command(cmd);
            assert!(out.success(), "kiln backup now {}:\n{out}", c.name);
            assert!(out.stdout.contains("verified"), "{out}");
        }
        let (out, entries) = list_json(&world, &c.name);
        assert!(out.success(), "kiln backup list {}:\n{out}", c.name);
        assert_eq!(entries.len(), 2, "{}: {entries:#?}", c.name);
        assert!(
            entries.iter().all(|e| e["state"]["state"] == "verified"),
            "{entries:#?}"
        );
    }

    // The folder: 0600 files, two snapshots and their manifests, no temporary leftover.
    let scratch = world.dir.path().join("scratch");
    std::fs::create_dir_all(&scratch).unwrap();
    let cluster_dir = folder.join(&dir_c.name);
    let mut names: Vec<String> = std::fs::read_dir(&cluster_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names.len(), 4, "{names:?}");
    assert!(names.iter().all(|n| !n.starts_with('.')), "{names:?}");
    for n in &names {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(cluster_dir.join(n))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{n}");
    }
    let (_, dir_entries) = list_json(&world, &dir_c.name);
    for e in &dir_entries {
        let m = &e["manifest"];
        let bytes =
            std::fs::read(cluster_dir.join(format!("{}.db.age", m["id"].as_str().unwrap())))
                .unwrap();
        check_snapshot(&bytes, m, &id_file, &scratch);
    }

    // S3, read through kiln's own destination code with the same keys.
    let s3 = kiln::backup::Destination::open(
        &format!("s3://{BUCKET}/fleet"),
        &backup_config(&moto, &keys),
    )
    .unwrap();
    let objects = s3.list(&s3_c.name).await.unwrap();
    assert_eq!(objects.len(), 4, "{objects:?}");
    let (_, s3_entries) = list_json(&world, &s3_c.name);
    for e in &s3_entries {
        let m = &e["manifest"];
        let key = format!("{}/{}.db.age", s3_c.name, m["id"].as_str().unwrap());
        let bytes = s3.get(&key).await.unwrap();
        check_snapshot(&bytes, m, &id_file, &scratch);
    }

    // Damage at the destination is found and told apart: one cut short, one altered.
    let cut = cluster_dir.join(format!("{}.db.age", dir_entries[0]["id"].as_str().unwrap()));
    let bytes = std::fs::read(&cut).unwrap();
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    let key = format!(
        "{}/{}.db.age",
        s3_c.name,
        s3_entries[1]["id"].as_str().unwrap()
    );
    let mut altered = s3.get(&key).await.unwrap().to_vec();
    let at = altered.len() / 2;
    altered[at] ^= 0x40;
    s3.put(&key, altered.into()).await.unwrap();
    let (out, entries) = list_json(&world, &dir_c.name);
    assert_eq!(
        out.code,
        Some(1),
        "list must fail on a truncated snapshot:\n{out}"
    );
    assert_eq!(entries[0]["state"]["state"], "truncated", "{entries:#?}");
    assert_eq!(entries[1]["state"]["state"], "verified", "{entries:#?}");
    let (out, entries) = list_json(&world, &s3_c.name);
    assert_eq!(
        out.code,
        Some(1),
        "list must fail on an altered snapshot:\n{out}"
    );
    assert_eq!(entries[1]["state"]["state"], "corrupt", "{entries:#?}");
    let mut cmd = kiln();
    cmd.args(["backup", "list", &s3_c.name, "--config"])
        .arg(&world.config);
    let out = world.run_command(cmd);
    assert!(out.stdout.contains("corrupt (SHA-256 differs"), "{out}");

    // The daemon reports it: a snapshot through it reads every stored one back, so the altered one
    // shows in the status (BackupDegraded, failed_checks) and in /metrics.
    let mut daemon = world.spawn_daemon(None);
    let mut cmd = kiln();
    cmd.args(["backup", "now", &s3_c.name, "--timeout", "90s", "--config"])
        .arg(&world.config);
    let out = world.run_command(cmd);
    assert!(out.success(), "kiln backup now through the daemon:\n{out}");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        daemon.assert_running();
        let (_, json) = world.status_json(Some(&s3_c.name));
        let status = json
            .as_ref()
            .and_then(|j| crate::checks::status_of(j, &s3_c.name))
            .cloned()
            .unwrap_or_default();
        let degraded = status["conditions"].as_array().is_some_and(|cs| {
            cs.iter().any(|c| {
                c["type"] == "BackupDegraded"
                    && c["status"] == true
                    && c["reason"] == "SnapshotCheckFailed"
            })
        });
        if degraded && status["backup"]["failed_checks"] == 1 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the status does not report the altered snapshot: {status:#}"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    let metrics = http
        .get(format!("http://{api_ip}:{api_port}/metrics"))
        .bearer_auth("backup-e2e-token")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for line in [
        format!("kiln_backup_failed_checks{{cluster=\"{}\"}} 1", s3_c.name),
        format!("kiln_backup_failed_checks{{cluster=\"{}\"}} 0", dir_c.name),
        format!(
            "kiln_backup_schedule_seconds{{cluster=\"{}\"}} 21600",
            s3_c.name
        ),
    ] {
        assert!(
            metrics.contains(&line),
            "{line} not in /metrics:\n{metrics}"
        );
    }
    assert!(
        metrics.contains(&format!(
            "kiln_backup_size_bytes{{cluster=\"{}\"}}",
            s3_c.name
        )),
        "{metrics}"
    );
}

/// The shipped backup alerts (`examples/monitoring/backup-alerts.yml`) load, and their cases pass
/// (`promtool`, Debian's `prometheus`; scripts/setup-test-env installs it); every `kiln_backup_*`
/// name they use is one kiln exports (from the metrics' own rendering of a cluster with backups).
#[test]
fn the_backup_alert_rules_pass_promtool_and_use_names_kiln_exports() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/monitoring");
    for args in [
        ["check", "rules", "backup-alerts.yml"],
        ["test", "rules", "backup-alerts.test.yml"],
    ] {
        let out = Command::new("promtool")
            .args(args)
            .current_dir(&dir)
            .output()
            .expect("promtool (Debian's prometheus; run scripts/setup-test-env)");
        assert!(
            out.status.success(),
            "promtool {args:?}:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let rules = std::fs::read_to_string(dir.join("backup-alerts.yml")).unwrap();
    let re = regex::Regex::new(r"kiln_backup_[a-z_]+").unwrap();
    let exported = [
        "kiln_backup_last_success_timestamp_seconds",
        "kiln_backup_size_bytes",
        "kiln_backup_failures_total",
        "kiln_backup_failed_checks",
        "kiln_backup_schedule_seconds",
    ];
    for m in re.find_iter(&rules) {
        assert!(
            exported.contains(&m.as_str()),
            "{} is not exported",
            m.as_str()
        );
    }
    let docs =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/metrics.md"))
            .unwrap();
    for name in exported {
        assert!(
            docs.contains(name),
            "docs/metrics.md does not document {name}"
        );
    }
}
