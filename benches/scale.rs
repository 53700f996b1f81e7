//! issue 31's figures in one table, each with the command that measures it again:
//!
//! ```sh
//! cargo bench --bench scale                      # everything (about 3 minutes)
//! cargo bench --bench scale -- plan              # load + validate + plan, 10 … 10,000 clusters
//! cargo bench --bench scale -- cycle             # no-op cycle at 1,000 clusters, render + commit, daemon RSS
//! cargo bench --bench scale -- poll              # no-op poll against `git daemon`: bytes
//! cargo bench --bench scale -- provision         # one 3+2 cluster and ten at concurrency 4 vs proxmoxer
//! cargo bench --bench scale -- --quick           # small sizes, for a smoke run
//! ```
//!
//! `KILN_BENCH_KILN=PATH` measures another kiln binary (say, another profile's) in the daemon and
//! provisioning figures; `KILN_BENCH_DAEMON_PREFIX` runs the daemon under a profiler and
//! `KILN_BENCH_SMAPS=FILE` keeps its memory map (BENCHMARKS.md).
//!
//! Needs the test virtualenv (`scripts/setup-test-env`) with `benches/requirements.txt` (proxmoxer),
//! `git` (with `git daemon`), and `KILN_REFERENCE_SCHEMAS` as for the tests. How each figure is
//! measured is in BENCHMARKS.md.

#[path = "scale/fixture.rs"]
mod fixture;
#[path = "scale/pve.rs"]
mod pve;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use fixture::Net;
use kiln::config::Config;
use kiln::git::GitSource;
use kiln::plan::{self, ConvergeInput, DriftPolicy};
use kiln::proxmox::Inventory;
use kiln::reconcile::engine::ValidIntent;
use kiln::reconcile::records::{ClusterRecord, ClusterUid, Records};
use kiln::reconcile::{Engine, Intent, KubeRs, Ports, observe, policy};
use serde_json::json;

/// The kiln binary the daemon and `run --once` figures run: this build's, or KILN_BENCH_KILN's (to
/// compare builds of other profiles on the same figures).
fn kiln_bin() -> String {
    std::env::var("KILN_BENCH_KILN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_kiln").to_owned())
}

/// One line of the table.
struct Figure {
    what: String,
    value: String,
    target: String,
    command: &'static str,
}

#[derive(Default)]
struct Table(Vec<Figure>);

impl Table {
    fn add(
        &mut self,
        what: impl Into<String>,
        value: impl Into<String>,
        target: &str,
        command: &'static str,
    ) {
        let f = Figure {
            what: what.into(),
            value: value.into(),
            target: target.into(),
            command,
        };
        // Also as it comes, so a long run shows progress and a crash keeps what was measured.
        eprintln!("  {} = {}", f.what, f.value);
        self.0.push(f);
    }

    fn print(&self) {
        println!("\n| figure | measured | target | rerun |");
        println!("|---|---|---|---|");
        for f in &self.0 {
            println!(
                "| {} | {} | {} | `{}` |",
                f.what, f.value, f.target, f.command
            );
        }
    }
}

/// Process CPU time (user + system, every thread, exited ones included): `getrusage(RUSAGE_SELF)`.
/// Time spent blocked on a socket is not CPU time, so a span measured this way leaves out the
/// network waits of the cycle (and fakepve's own CPU, another process).
fn cpu_time() -> Duration {
    // SAFETY: getrusage writes into the struct it is given and nothing else.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) };
    assert_eq!(rc, 0, "getrusage");
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(u.ru_utime) + tv(u.ru_stime)
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1e3)
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// A cluster uid per cluster, fixed by its index so runs are alike.
fn uid_of(name: &str) -> ClusterUid {
    let n: u64 = name.trim_start_matches('c').parse().unwrap_or(0);
    let text = format!("{:08x}-0000-4000-8000-{n:012x}", 0x6b696c6e_u32);
    serde_json::from_value(json!(text)).expect("a uuid")
}

// ------------------------------------------------------------------------------------------------
// load + validate + plan

fn bench_plan(table: &mut Table, sizes: &[usize]) {
    eprintln!("plan: load + validate + plan with nothing to do");
    for &n in sizes {
        let files = fixture::files(n, Net::Private);
        let load = || {
            kiln::spec::load(
                files
                    .iter()
                    .map(|(p, t)| (Path::new(p.as_str()), t.as_str())),
            )
        };
        let outcome = load();
        assert!(outcome.invalid.is_empty(), "{:?}", outcome.invalid.first());
        assert_eq!(outcome.clusters.len(), n);
        let body = fixture::listing_json(&outcome.clusters, |c| {
            uid_of(c.name.as_str()).as_str().to_owned()
        });
        // What the worker holds for each cluster: its record (the text last applied).
        let records: Vec<ClusterRecord> = files
            .iter()
            .map(|(p, t)| ClusterRecord {
                spec_text: t.clone(),
                path: p.clone(),
                applied_revision: Some("bench".into()),
                ..Default::default()
            })
            .collect();
        let runs = if n >= 10_000 { 3 } else { 5 };
        let mut walls = Vec::new();
        let mut cpus = Vec::new();
        let mut parts = Vec::new();
        for _ in 0..runs {
            let (w0, c0) = (Instant::now(), cpu_time());
            let outcome = load();
            let loaded = w0.elapsed();
            let inventory = Inventory::from_listing_json(&body).expect("listing");
            let listed = w0.elapsed();
            let mut steps = 0;
            // The engine's job per cluster: its valid intent (moved, as the cycle moves it into
            // the cluster's job) and its record.
            for ((cluster, record), (path, text)) in
                outcome.clusters.into_iter().zip(&records).zip(&files)
            {
                let valid = ValidIntent {
                    cluster,
                    path: path.clone(),
                    text: text.clone(),
                    revision: "bench".into(),
                };
                let cluster = &valid.cluster;
                let previous = policy::previous_cluster(record, &valid);
                let seen = observe::listing(&inventory, cluster);
                assert!(
                    observe::matches_intent(&seen.observed, cluster),
                    "{}: the fixture's VMs do not match the intent",
                    cluster.name
                );
                let p = plan::converge(ConvergeInput {
                    desired: cluster,
                    previous: previous.as_ref(),
                    observed: &seen.observed,
                    drift_policy: DriftPolicy::Repair,
                    intent_changed: false,
                });
                steps += p.steps.len() + p.blockers.len();
            }
            assert_eq!(steps, 0, "a converged fleet plans nothing");
            let total = w0.elapsed();
            walls.push(total);
            cpus.push(cpu_time() - c0);
            parts.push((loaded, listed - loaded, total - listed));
        }
        let wall = median(walls.clone());
        let i = walls.iter().position(|w| *w == wall).unwrap();
        let (l, inv, pl) = parts[i];
        table.add(
            format!("load + validate + plan, {n} clusters ({} VMs)", n * 5),
            format!(
                "**{}** wall, {} CPU (load {}, listing {}, observe + plan {}); median of {runs}",
                ms(wall),
                ms(cpus[i]),
                ms(l),
                ms(inv),
                ms(pl)
            ),
            if n == 10_000 { "≤ 1 s" } else { "linear" },
            "cargo bench --bench scale -- plan",
        );
    }
}

// ------------------------------------------------------------------------------------------------
// Git helpers

fn git(dir: &Path, args: &[&str]) {
    let out = Command::new("git")
        .current_dir(dir)
        .args(args)
        .env("GIT_AUTHOR_NAME", "bench")
        .env("GIT_AUTHOR_EMAIL", "bench@localhost")
        .env("GIT_COMMITTER_NAME", "bench")
        .env("GIT_COMMITTER_EMAIL", "bench@localhost")
        .output()
        .expect("git");
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A bare remote `remote.git` under `dir` whose `main` holds `files`.
fn remote_with(dir: &Path, files: &[(String, String)]) -> PathBuf {
    let bare = dir.join("remote.git");
    let work = dir.join("work");
    git(dir, &["init", "-q", "--bare", "-b", "main", "remote.git"]);
    git(dir, &["init", "-q", "-b", "main", "work"]);
    for (p, t) in files {
        let path = work.join(p);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, t).unwrap();
    }
    std::fs::write(work.join("README.md"), "scale bench fleet\n").unwrap();
    git(&work, &["add", "-A"]);
    git(&work, &["commit", "-q", "-m", "the bench fleet"]);
    git(&work, &["push", "-q", bare.to_str().unwrap(), "main"]);
    bare
}

struct TomlParts<'a> {
    state: &'a Path,
    git_url: &'a str,
    pve_url: &'a str,
    token: &'a Path,
    ca: &'a Path,
    poll: &'a str,
    concurrency: usize,
}

fn kiln_toml(dir: &Path, p: TomlParts<'_>) -> PathBuf {
    let text = format!(
        r#"# kiln.toml of the scale bench (benches/scale.rs)
state_dir = "{state}"

[git]
url = "{url}"
branch = "main"
poll_interval = "{poll}"
author = "kiln <kiln@localhost>"

[proxmox]
backend = "api"
url = "{pve}"
token_id = "{token_id}"
token_secret_file = "{token}"
ca_file = "{ca}"
task_timeout = "300s"

[talos]
backend = "grpc"

[secrets]
backend = "file"

[reconcile]
concurrency = {concurrency}
# Deep checks (Vault, Talos, Kubernetes per cluster) spread over this interval; a day keeps them
# out of the no-op figures, which measure the cheap path every cycle takes.
drift_interval = "24h"
retry_initial = "500ms"
retry_max = "5s"
"#,
        state = p.state.display(),
        url = p.git_url,
        poll = p.poll,
        pve = p.pve_url,
        token_id = pve::TOKEN_ID,
        token = p.token.display(),
        ca = p.ca.display(),
        concurrency = p.concurrency,
    );
    let path = dir.join("kiln.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// The kiln.toml of a fleet whose files are in `bare`, reconciled against `pve`: its path and its
/// state folder.
fn fleet_toml(
    dir: &Path,
    bare: &Path,
    pve: &pve::FakePve,
    concurrency: usize,
) -> (PathBuf, PathBuf) {
    let (token, ca) = pve.write_credentials(dir);
    let state = dir.join("state");
    let url = format!("file://{}", bare.display());
    let toml = kiln_toml(
        dir,
        TomlParts {
            state: &state,
            git_url: &url,
            pve_url: &pve.url(),
            token: &token,
            ca: &ca,
            poll: "1s",
            concurrency,
        },
    );
    (toml, state)
}

fn ports(config: &Config) -> (Ports, kiln::secrets::OpenedStore) {
    let store = kiln::secrets::open_gated(&config.secrets, &config.state_dir, None).unwrap();
    let adapter = kiln::proxmox::PveAdapter::from_config(&config.proxmox).unwrap();
    (
        Ports {
            proxmox: Arc::new(adapter),
            talos: Arc::new(kiln::talos::grpc::GrpcTalos::default()),
            secrets: store.store.clone(),
            kube: Arc::new(KubeRs),
        },
        store,
    )
}

// ------------------------------------------------------------------------------------------------
// no-op cycle, render + commit, daemon RSS

fn bench_cycle(table: &mut Table, n: usize) {
    eprintln!("cycle: {n} converged clusters, {} VMs in fakepve", n * 5);
    let dir = tempfile::tempdir().unwrap();
    let files = fixture::files(n, Net::Private);
    let bare = remote_with(dir.path(), &files);
    let mut pve = pve::FakePve::start(dir.path(), 0.0, &[]);
    let (config_path, state) = fleet_toml(dir.path(), &bare, &pve, 4);
    let config = Config::load(&config_path).expect("the bench's kiln.toml");
    std::fs::create_dir_all(&state).unwrap();

    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let git = GitSource::open(&config.git, &config.state_dir).await.unwrap();
        git.poll().await.unwrap();
        let snapshot = git.current_snapshot().await.unwrap();
        let intent = Intent::read(&snapshot);
        assert!(intent.invalid.is_empty());
        assert_eq!(intent.valid.len(), n);
        // What a converged fleet leaves behind: kiln's records (applied revision, uid, a recent
        // deep look) and its VMs in Proxmox, as kiln's create makes them.
        let mut records = Records::default();
        let mut vms = Vec::new();
        let now = time::OffsetDateTime::now_utc();
        for (name, v) in &intent.valid {
            let uid = uid_of(name.as_str());
            vms.extend(fixture::launcher_vms(&v.cluster, uid.as_str()));
            records.clusters.insert(
                name.clone(),
                ClusterRecord {
                    spec_text: v.text.clone(),
                    path: v.path.clone(),
                    applied_revision: Some(v.revision.clone()),
                    cluster_uid: Some(uid),
                    deep_checked_at: Some(now),
                    ..Default::default()
                },
            );
        }
        records.save(&config.state_dir).unwrap();
        pve.add_vms(vms);

        let (_tx, shutdown) = tokio::sync::watch::channel(false);
        let (ports, _store) = ports(&config);
        let mut engine = Engine::new(config.clone(), git, ports, shutdown, None).unwrap();

        // The first cycle renders and commits every cluster's files (never published before).
        pve.clear_requests();
        let (w0, c0) = (Instant::now(), cpu_time());
        let first = engine.cycle().await;
        let (first_wall, first_cpu) = (w0.elapsed(), cpu_time() - c0);
        assert!(first.pushed.is_some(), "the first cycle publishes: {first:?}");
        let not_ready: Vec<_> = engine
            .status()
            .clusters
            .values()
            .filter(|s| s.phase != kiln::reconcile::status::Phase::Ready)
            .take(3)
            .collect();
        assert!(first.converged, "{first:?}: {not_ready:#?}");
        let first_requests = pve.requests().len();

        let cycles = 7;
        let mut walls = Vec::new();
        let mut cpus = Vec::new();
        let mut requests = Vec::new();
        for _ in 0..cycles {
            pve.clear_requests();
            let (w0, c0) = (Instant::now(), cpu_time());
            let report = engine.cycle().await;
            walls.push(w0.elapsed());
            cpus.push(cpu_time() - c0);
            assert!(report.converged && report.pushed.is_none(), "{report:?}");
            let seen = pve.requests();
            assert!(
                seen.iter().all(|(m, p, _)| m == "GET" && p.starts_with("/api2/json/cluster/resources")),
                "a no-op cycle only lists: {seen:?}"
            );
            requests.push(seen.len());
        }
        let ready = engine
            .status()
            .clusters
            .values()
            .filter(|s| s.phase == kiln::reconcile::status::Phase::Ready)
            .count();
        assert_eq!(ready, n, "every cluster Ready after the no-op cycles");
        let no_op_wall = median(walls.clone());
        let no_op_cpu = median(cpus.clone());
        table.add(
            format!("no-op cycle, {n} clusters / {} VMs: wall", n * 5),
            format!("**{}** (median of {cycles}; min {}, max {})", ms(no_op_wall), ms(*walls.iter().min().unwrap()), ms(*walls.iter().max().unwrap())),
            "—",
            "cargo bench --bench scale -- cycle",
        );
        table.add(
            format!("no-op cycle, {n} clusters: kiln CPU (user + sys)"),
            format!("**{}** (median of {cycles}; min {}, max {})", ms(no_op_cpu), ms(*cpus.iter().min().unwrap()), ms(*cpus.iter().max().unwrap())),
            "≤ 100 ms",
            "cargo bench --bench scale -- cycle",
        );
        table.add(
            format!("no-op cycle, {n} clusters: Proxmox requests (fakepve's log)"),
            format!("**{}** per cycle ({:?}), `GET /cluster/resources`", requests[0], requests),
            "exactly 1",
            "cargo bench --bench scale -- cycle",
        );
        table.add(
            format!("first cycle, {n} clusters: render + commit + push of every generated file, plus the no-op turns"),
            format!(
                "**{}** wall, {} CPU ({first_requests} Proxmox request(s)); minus a no-op cycle ≈ {} for render + commit + push",
                ms(first_wall),
                ms(first_cpu),
                ms(first_wall.saturating_sub(no_op_wall))
            ),
            "—",
            "cargo bench --bench scale -- cycle",
        );
        drop(engine);
    });
    drop(runtime);

    daemon_rss(table, &config_path, &mut pve, n);
}

/// `kiln run` (this build's binary) over the converged state: VmHWM after a few no-op cycles.
fn daemon_rss(table: &mut Table, config: &Path, pve: &mut pve::FakePve, n: usize) {
    let bin = kiln_bin();
    pve.clear_requests();
    // KILN_BENCH_DAEMON_PREFIX runs the daemon under a profiler (e.g. "heaptrack -o /tmp/kiln"); the
    // figures are then the profiler's process, for finding what to fix, not for the table.
    let prefix = std::env::var("KILN_BENCH_DAEMON_PREFIX").unwrap_or_default();
    let mut words = prefix
        .split_whitespace()
        .map(str::to_owned)
        .collect::<Vec<_>>();
    words.push(bin);
    let mut child = Command::new(&words[0])
        .args(&words[1..])
        .args(["run", "--config"])
        .arg(config)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("kiln run");
    let pid = child.id();
    let listings = |pve: &mut pve::FakePve| {
        pve.requests()
            .iter()
            .filter(|(_, p, _)| p.starts_with("/api2/json/cluster/resources"))
            .count()
    };
    let started = Instant::now();
    let stat_cpu = || -> Duration {
        // utime + stime, fields 14 and 15 of /proc/PID/stat, in clock ticks (100 per second).
        let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
        let rest = &s[s.rfind(')').unwrap() + 2..];
        let f: Vec<&str> = rest.split(' ').collect();
        let ticks: u64 = f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap();
        Duration::from_millis(ticks * 10)
    };
    // The first listing is the first cycle's; measure CPU from there over the cycles after it.
    let mut cpu_from = None;
    let wanted = 8;
    loop {
        assert!(child.try_wait().unwrap().is_none(), "kiln run exited early");
        let seen = listings(pve);
        if seen >= 2 && cpu_from.is_none() {
            cpu_from = Some((stat_cpu(), seen));
        }
        if seen >= wanted {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "kiln run made {seen} cycles in 120 s"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |k: &str| {
        status
            .lines()
            .find(|l| l.starts_with(k))
            .map(|l| l[k.len()..].trim().to_owned())
            .unwrap_or_default()
    };
    let (cpu0, seen0) = cpu_from.unwrap();
    let seen = listings(pve);
    let per_cycle = (stat_cpu() - cpu0) / (seen - seen0).max(1) as u32;
    let hwm_kib: f64 = field("VmHWM:").trim_end_matches(" kB").parse().unwrap();
    let rss_kib: f64 = field("VmRSS:").trim_end_matches(" kB").parse().unwrap();
    // Resident memory is the heap (anonymous) plus the pages of mapped files it touched: the
    // binary's own code and Git's pack files, which the kernel can drop and share.
    let anon_kib: f64 = field("RssAnon:").trim_end_matches(" kB").parse().unwrap();
    let file_kib: f64 = field("RssFile:").trim_end_matches(" kB").parse().unwrap();
    // KILN_BENCH_SMAPS=FILE keeps the daemon's /proc/PID/smaps of that moment: which mappings the
    // resident pages belong to.
    if let Some(to) = std::env::var_os("KILN_BENCH_SMAPS") {
        std::fs::copy(format!("/proc/{pid}/smaps"), to).unwrap();
    }
    // SAFETY: a signal to the child this function started.
    unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    let exit = child.wait().unwrap();
    table.add(
        format!("daemon peak RSS, {n} clusters, after {seen} no-op cycles"),
        format!(
            "**{:.1} MiB** VmHWM ({:.1} MiB VmRSS at that moment: {:.1} MiB anonymous, {:.1} MiB \
             mapped files); exit on SIGTERM: {exit}",
            hwm_kib / 1024.0,
            rss_kib / 1024.0,
            anon_kib / 1024.0,
            file_kib / 1024.0
        ),
        "≤ 50 MiB",
        "cargo bench --bench scale -- cycle",
    );
    table.add(
        format!("daemon CPU per no-op cycle, {n} clusters (`/proc/PID/stat`, 10 ms ticks)"),
        format!("{} over {} cycles", ms(per_cycle), seen - seen0),
        "≤ 100 ms",
        "cargo bench --bench scale -- cycle",
    );
}

// ------------------------------------------------------------------------------------------------
// no-op poll: bytes on the wire

/// A TCP relay counting the bytes each way, in front of `git daemon`.
struct CountingRelay {
    port: u16,
    up: Arc<AtomicU64>,
    down: Arc<AtomicU64>,
}

impl CountingRelay {
    fn start(target: u16) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let up = Arc::new(AtomicU64::new(0));
        let down = Arc::new(AtomicU64::new(0));
        let (u, d) = (up.clone(), down.clone());
        std::thread::spawn(move || {
            for client in listener.incoming().map_while(Result::ok) {
                let Ok(server) = TcpStream::connect(("127.0.0.1", target)) else {
                    continue;
                };
                let pipe = |mut from: TcpStream, mut to: TcpStream, n: Arc<AtomicU64>| {
                    std::thread::spawn(move || {
                        let mut buf = [0u8; 16384];
                        while let Ok(k) = from.read(&mut buf) {
                            // Counted before it is passed on: whoever reads it was counted.
                            n.fetch_add(k as u64, Ordering::SeqCst);
                            if k == 0 || to.write_all(&buf[..k]).is_err() {
                                break;
                            }
                        }
                        let _ = to.shutdown(std::net::Shutdown::Write);
                    })
                };
                pipe(
                    client.try_clone().unwrap(),
                    server.try_clone().unwrap(),
                    u.clone(),
                );
                pipe(server, client, d.clone());
            }
        });
        Self { port, up, down }
    }

    fn take(&self) -> (u64, u64) {
        (
            self.up.swap(0, Ordering::SeqCst),
            self.down.swap(0, Ordering::SeqCst),
        )
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn bench_poll(table: &mut Table, n: usize) {
    eprintln!("poll: an unchanged remote of {n} cluster files behind `git daemon`");
    let dir = tempfile::tempdir().unwrap();
    let files = fixture::files(n, Net::Private);
    remote_with(dir.path(), &files);
    let port = free_port();
    let mut daemon = Command::new("git")
        .args([
            "daemon",
            "--reuseaddr",
            "--export-all",
            "--listen=127.0.0.1",
        ])
        .arg(format!("--port={port}"))
        .arg(format!("--base-path={}", dir.path().display()))
        .arg(dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("git daemon");
    let up_at = Instant::now();
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            up_at.elapsed() < Duration::from_secs(10),
            "git daemon did not listen"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let relay = CountingRelay::start(port);
    let url = format!("git://127.0.0.1:{}/remote.git", relay.port);
    let state = dir.path().join("state");
    std::fs::create_dir_all(&state).unwrap();
    // Only [git] matters here; the other sections are the bench's usual ones.
    let toml = kiln_toml(
        dir.path(),
        TomlParts {
            state: &state,
            git_url: &url,
            pve_url: "https://127.0.0.1:1",
            token: &dir.path().join("unused"),
            ca: &dir.path().join("unused"),
            poll: "1s",
            concurrency: 1,
        },
    );
    std::fs::write(dir.path().join("unused"), "unused\n").unwrap();
    let git_config = Config::load(&toml).expect("kiln.toml").git;
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let (first, polls) = runtime.block_on(async {
        let git = GitSource::open(&git_config, &state).await.unwrap();
        git.poll().await.unwrap();
        let first = relay.take();
        let mut polls = Vec::new();
        for _ in 0..5 {
            let t = Instant::now();
            let outcome = git.poll().await.unwrap();
            polls.push((relay.take(), t.elapsed(), format!("{outcome:?}")));
        }
        (first, polls)
    });
    // What `git ls-remote` (protocol v2, refs only) moves, for comparison.
    let out = Command::new("git")
        .args(["-c", "protocol.version=2", "ls-remote", &url])
        .output()
        .unwrap();
    assert!(out.status.success());
    let ls_remote = relay.take();
    let _ = daemon.kill();
    let _ = daemon.wait();
    let ((up, down), took, outcome) = &polls[polls.len() - 1];
    // The request varies by a few bytes between polls; the range is reported.
    let totals: Vec<u64> = polls.iter().map(|p| p.0.0 + p.0.1).collect();
    let (lo, hi) = (totals.iter().min().unwrap(), totals.iter().max().unwrap());
    table.add(
        format!("no-op poll, {n} files unchanged, `git daemon` (bytes on the wire)"),
        format!(
            "**{lo}–{hi} B** per poll over 5 polls (the last: {up} sent, {down} received; {}; {outcome}); `git ls-remote` moves {} + {} B; the first fetch {} + {} B",
            ms(*took),
            ls_remote.0,
            ls_remote.1,
            first.0,
            first.1
        ),
        "refs only",
        "cargo bench --bench scale -- poll",
    );
}

// ------------------------------------------------------------------------------------------------
// provisioning against fakepve with realistic task times

/// Realistic task times in PVE seconds (a full clone of a 20 GiB disk, a start), played at
/// `TIME_SCALE` real seconds per PVE second.
const TIME_SCALE: f64 = 0.05;
const TASK_SECS: &[(&str, f64)] = &[("qmclone", 40.0), ("qmstart", 5.0)];

struct TalosSim(std::process::Child);

impl Drop for TalosSim {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn talos_sim(ips: &[String], dir: &Path) -> TalosSim {
    use std::io::BufRead;
    let mut cmd = Command::new(kiln_bin());
    cmd.args(["sim", "talos", "--dump-dir"])
        .arg(dir.join("talos-dump"));
    cmd.arg("--listen");
    for ip in ips {
        cmd.arg(format!("{ip}:50000"));
    }
    let mut child = cmd
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(dir.join("talos-sim.log")).unwrap())
        .spawn()
        .expect("kiln sim talos");
    let stdout = child.stdout.take().unwrap();
    let mut listening = 0;
    for line in std::io::BufReader::new(stdout)
        .lines()
        .map_while(Result::ok)
    {
        if line.contains("listening on") {
            listening += 1;
            if listening == ips.len() {
                break;
            }
        }
    }
    assert_eq!(
        listening,
        ips.len(),
        "kiln sim talos did not listen on every node"
    );
    TalosSim(child)
}

/// `kiln run --once` for `clusters` loopback clusters from `first_block`; (whole run, from the first
/// clone to the end).
fn kiln_provision(clusters: usize, first_block: u16, concurrency: usize) -> Provisioned {
    let dir = tempfile::tempdir().unwrap();
    let net = Net::Loopback { first_block };
    let files: Vec<(String, String)> = (0..clusters)
        .map(|i| {
            (
                format!("clusters/{}.yaml", fixture::name(i)),
                fixture::intent(i, net),
            )
        })
        .collect();
    let bare = remote_with(dir.path(), &files);
    let ips: Vec<String> = (0..clusters)
        .flat_map(|i| (1..=5).map(move |n| fixture::node_ip(net, i, n)))
        .collect();
    let _sim = talos_sim(&ips, dir.path());
    let mut pve = pve::FakePve::start(dir.path(), TIME_SCALE, TASK_SECS);
    let (config, _) = fleet_toml(dir.path(), &bare, &pve, concurrency);
    let t0_unix = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let t0 = Instant::now();
    // KILN_BENCH_TRACE=1: kiln's info log and fakepve's request log, both timed from the start,
    // to see where a provisioning run spends its time.
    let trace = std::env::var_os("KILN_BENCH_TRACE").is_some();
    let out = Command::new(kiln_bin())
        .args(["run", "--once", "--timeout", "600s", "--config"])
        .arg(&config)
        .env("RUST_LOG", if trace { "info" } else { "warn" })
        .env(
            "KILN_REFERENCE_SCHEMAS",
            std::env::var_os("KILN_REFERENCE_SCHEMAS").unwrap_or_default(),
        )
        .output()
        .expect("kiln run --once");
    let whole = t0.elapsed();
    let end_unix = t0_unix + whole.as_secs_f64();
    assert!(
        out.status.success(),
        "kiln run --once failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let log = pve.requests();
    if trace {
        eprintln!("{}", String::from_utf8_lossy(&out.stderr));
        for (m, p, t) in &log {
            eprintln!("{:8.3} {m} {p}", t - t0_unix);
        }
    }
    let clones: Vec<f64> = log
        .iter()
        .filter(|(m, p, _)| m == "POST" && p.ends_with("/clone"))
        .map(|(_, _, t)| *t)
        .collect();
    assert_eq!(clones.len(), clusters * 5, "one clone per VM");
    let first_clone = clones.iter().cloned().fold(f64::INFINITY, f64::min);
    // kiln's last look at a start task is the one that saw it stopped: the VMs are all up then.
    let last_start = log
        .iter()
        .filter(|(m, p, _)| m == "GET" && p.contains(":qmstart:"))
        .map(|(_, _, t)| *t)
        .fold(first_clone, f64::max);
    Provisioned {
        whole,
        from_clone: Duration::from_secs_f64(end_unix - first_clone),
        vms: Duration::from_secs_f64(last_start - first_clone),
        requests: log.len(),
    }
}

struct Provisioned {
    /// `kiln run --once` from its start to its exit.
    whole: Duration,
    /// From the first clone request to the exit.
    from_clone: Duration,
    /// From the first clone request to the last start task seen finished.
    vms: Duration,
    requests: usize,
}

/// benches/scale/baseline.py against a fresh fakepve with the same task times: (serial, parallel).
fn baseline() -> (Duration, Duration) {
    let dir = tempfile::tempdir().unwrap();
    let pve = pve::FakePve::start(dir.path(), TIME_SCALE, TASK_SECS);
    let (_, ca) = pve.write_credentials(dir.path());
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("benches/scale/baseline.py");
    let out = Command::new(pve::venv().join("bin/python"))
        .arg(script)
        .args(["--port", &pve.port.to_string(), "--ca"])
        .arg(&ca)
        .args(["--token", pve::TOKEN_ID, "--secret", pve::TOKEN_SECRET])
        .output()
        .expect("the baseline script");
    assert!(
        out.status.success(),
        "baseline.py failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    (
        Duration::from_secs_f64(v["serial"].as_f64().unwrap()),
        Duration::from_secs_f64(v["parallel"].as_f64().unwrap()),
    )
}

fn secs(d: Duration) -> String {
    format!("{:.2} s", d.as_secs_f64())
}

fn bench_provision(table: &mut Table, ten: bool) {
    eprintln!(
        "provision: clone {} PVE-s, start {} PVE-s, time_scale {TIME_SCALE}",
        TASK_SECS[0].1, TASK_SECS[1].1
    );
    let (serial, parallel) = baseline();
    let one = kiln_provision(1, 0, 4);
    let cmd = "cargo bench --bench scale -- provision";
    table.add(
        "provisioning one 3+2 cluster: proxmoxer script, one VM after another",
        format!("**{}**", secs(serial)),
        "—",
        cmd,
    );
    table.add(
        "provisioning one 3+2 cluster: proxmoxer, five threads at once (the limit)",
        format!("**{}**", secs(parallel)),
        "—",
        cmd,
    );
    table.add(
        "provisioning one 3+2 cluster: `kiln run --once`, whole run (bundle first; Talos configured, etcd bootstrapped, nodes Ready)",
        format!(
            "**{}** = {:.2}× the serial script ({} Proxmox requests)",
            secs(one.whole),
            one.whole.as_secs_f64() / serial.as_secs_f64(),
            one.requests
        ),
        "≤ 0.5× serial",
        cmd,
    );
    table.add(
        "provisioning one 3+2 cluster: `kiln run --once`, first clone → end",
        format!(
            "**{}** = {:.2}× the parallel limit",
            secs(one.from_clone),
            one.from_clone.as_secs_f64() / parallel.as_secs_f64()
        ),
        "≤ 1.5× parallel",
        cmd,
    );
    table.add(
        "provisioning one 3+2 cluster: `kiln run --once`, first clone → last VM started (the part the scripts do)",
        format!(
            "**{}** = {:.2}× the parallel limit",
            secs(one.vms),
            one.vms.as_secs_f64() / parallel.as_secs_f64()
        ),
        "—",
        cmd,
    );
    if ten {
        let ten = kiln_provision(10, 16, 4);
        table.add(
            "provisioning ten 3+2 clusters, `concurrency = 4`: `kiln run --once`",
            format!(
                "**{}** whole run, {} from the first clone, VMs {} ({} Proxmox requests)",
                secs(ten.whole),
                secs(ten.from_clone),
                secs(ten.vms),
                ten.requests
            ),
            "—",
            cmd,
        );
    }
}

fn main() {
    // `cargo bench` passes `--bench`; anything else not a section name is ignored likewise.
    let args: Vec<String> = std::env::args().skip(1).collect();
    let quick = args.iter().any(|a| a == "--quick");
    let sections = ["plan", "cycle", "poll", "provision"];
    let chosen: Vec<&str> = sections
        .iter()
        .copied()
        .filter(|s| args.iter().any(|a| a == s))
        .collect();
    let run = |s: &str| chosen.is_empty() || chosen.contains(&s);
    let mut table = Table::default();
    let started = Instant::now();
    if run("plan") {
        let sizes: &[usize] = if quick {
            &[10, 100]
        } else {
            &[10, 100, 1_000, 10_000]
        };
        bench_plan(&mut table, sizes);
    }
    if run("cycle") {
        bench_cycle(&mut table, if quick { 50 } else { 1_000 });
    }
    if run("poll") {
        bench_poll(&mut table, if quick { 50 } else { 1_000 });
    }
    if run("provision") {
        bench_provision(&mut table, !quick);
    }
    table.print();
    println!(
        "\n{} on {} ({} cores), in {:.0} s",
        env!("CARGO_PKG_VERSION"),
        std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(
                |c| c.lines().find(|l| l.starts_with("model name")).map(|l| l
                    .split(':')
                    .nth(1)
                    .unwrap_or("")
                    .trim()
                    .to_owned())
            )
            .unwrap_or_default(),
        std::thread::available_parallelism().map_or(1, |n| n.get()),
        started.elapsed().as_secs_f64()
    );
}
