//! Issue 24 points 7 and 8 through `kiln render`: a template override that never ends is refused
//! naming it, and an override (or the clusters folder's file) that is a symbolic link is refused
//! without being read.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

fn examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/clusters")
}

/// `kiln render --all` with `templates` as the overrides folder; stopped after `limit`.
fn render_with(templates: &Path, out: &Path, limit: Duration) -> (Option<i32>, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_kiln"))
        .arg("render")
        .arg("--all")
        .arg("--clusters")
        .arg(examples())
        .arg("--templates")
        .arg(templates)
        .arg("--out")
        .arg(out)
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(out.with_extension("stderr")).unwrap())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s.code();
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("kiln render still ran after {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let said = std::fs::read_to_string(out.with_extension("stderr")).unwrap();
    (status, said)
}

#[test]
fn an_override_that_never_ends_is_refused_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let templates = dir.path().join("templates");
    std::fs::create_dir(&templates).unwrap();
    std::fs::write(
        templates.join("cluster-facts.yaml.j2"),
        "{% for a in range(100000) %}{% for b in range(100000) %}{% endfor %}{% endfor %}\n",
    )
    .unwrap();
    let out = dir.path().join("out");
    let (code, said) = render_with(&templates, &out, Duration::from_secs(60));
    assert_eq!(code, Some(1), "{said}");
    assert!(said.contains("cluster-facts.yaml.j2"), "{said}");
    assert!(!out.exists(), "files were written: {said}");
}

#[test]
fn an_override_that_is_a_symlink_is_refused_unread() {
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("api-token");
    std::fs::write(&secret, "tok-0123456789abcdefghijklmnopqrstuvwxyz\n").unwrap();
    let templates = dir.path().join("templates");
    std::fs::create_dir(&templates).unwrap();
    std::os::unix::fs::symlink(&secret, templates.join("cluster-facts.yaml.j2")).unwrap();
    let out = dir.path().join("out");
    let (code, said) = render_with(&templates, &out, Duration::from_secs(60));
    assert_ne!(code, Some(0), "{said}");
    assert!(
        said.contains("cluster-facts.yaml.j2") && said.contains("symbolic link"),
        "{said}"
    );
    assert!(
        !said.contains("tok-0123"),
        "the link's target was read: {said}"
    );
    assert!(!out.exists(), "files were written: {said}");
}
