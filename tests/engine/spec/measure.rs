//! Peak memory and wall time of one child process, measured by the kernel: a small Python parent
//! forks the command, reads `ru_maxrss` from `wait4` (the child's own high-water mark, whatever
//! happened between two looks), and kills the child if it passes a memory or time cap, so a test of
//! a regression cannot take the shared machine down with it.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

const PARENT: &str = r#"
import json, os, signal, sys, time
out, mem_cap_kib, time_cap = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
argv = sys.argv[4:]
start = time.monotonic()
pid = os.fork()
if pid == 0:
    os.execv(argv[0], argv)
killed = None
while True:
    done, status, ru = os.wait4(pid, os.WNOHANG)
    if done:
        break
    try:
        with open(f"/proc/{pid}/status") as f:
            rss = next((int(l.split()[1]) for l in f if l.startswith("VmRSS:")), 0)
    except OSError:
        rss = 0
    if killed is None and rss > mem_cap_kib:
        killed = f"resident memory {rss} KiB passed the cap of {mem_cap_kib} KiB"
    if killed is None and time.monotonic() - start > time_cap:
        killed = f"still running after {time_cap} s"
    if killed is not None:
        os.kill(pid, signal.SIGKILL)
    time.sleep(0.005)
elapsed = time.monotonic() - start
code = os.waitstatus_to_exitcode(status)
json.dump({"code": code, "max_rss_kib": ru.ru_maxrss, "elapsed": elapsed, "killed": killed}, open(out, "w"))
"#;

#[derive(Debug)]
pub struct Measured {
    /// The exit code; negative: the signal that ended it.
    pub code: i64,
    pub max_rss_kib: u64,
    pub elapsed: Duration,
    /// Why the parent killed the child, if it did.
    pub killed: Option<String>,
}

fn python() -> PathBuf {
    std::env::var_os("KILN_TEST_VENV")
        .map(|v| PathBuf::from(v).join("bin/python3"))
        .filter(|p| p.exists())
        .unwrap_or_else(|| PathBuf::from("python3"))
}

/// A command that runs `program args…` under the measuring parent; read the result with
/// [`read_measured`] once it exited. Memory above `mem_cap_kib` or time above `time_cap` kills it.
pub fn measured_command(
    program: &Path,
    args: &[OsString],
    result: &Path,
    mem_cap_kib: u64,
    time_cap: Duration,
) -> Command {
    let mut cmd = Command::new(python());
    cmd.arg("-c")
        .arg(PARENT)
        .arg(result)
        .arg(mem_cap_kib.to_string())
        .arg(time_cap.as_secs_f64().to_string())
        .arg(program)
        .args(args);
    cmd
}

pub fn read_measured(result: &Path) -> Measured {
    let text = std::fs::read_to_string(result)
        .unwrap_or_else(|e| panic!("the measuring parent wrote no {}: {e}", result.display()));
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    Measured {
        code: v["code"].as_i64().unwrap(),
        max_rss_kib: v["max_rss_kib"].as_u64().unwrap(),
        elapsed: Duration::from_secs_f64(v["elapsed"].as_f64().unwrap()),
        killed: v["killed"].as_str().map(str::to_owned),
    }
}

/// A cluster-shaped file of about `bytes` bytes whose aliases expand to 4 × 10^8 values, the shape
/// of the issue's: a list of 1,000 scalars, a list of 100 aliases to it, a list of 4,000 aliases
/// to that. It is padded with a long plain list (events, not comments: serde_yaml allows 100 alias
/// replays per event of the file, so a file of many events gets to expand that far).
pub fn alias_bomb(name: &str, bytes: usize) -> String {
    let mut text =
        format!("apiVersion: kiln.dev/v1alpha1\nkind: Cluster\nmetadata:\n  name: {name}\n");
    text.push_str(&format!("a: &a [{}]\n", vec!["x"; 1000].join(", ")));
    text.push_str(&format!("b: &b [{}]\n", vec!["*a"; 100].join(", ")));
    text.push_str(&format!("c: [{}]\n", vec!["*b"; 4000].join(", ")));
    text.push_str("padding: [p");
    while text.len() + 2 < bytes {
        text.push_str(", p");
    }
    text.push_str("]\n");
    text
}
