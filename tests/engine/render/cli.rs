//! `kiln render CLUSTER|--all --out DIR`: the preview writes what the library renders.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use super::support::*;

fn files_under(root: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else {
                let rel = path
                    .strip_prefix(root)
                    .unwrap()
                    .to_str()
                    .unwrap()
                    .to_owned();
                out.insert(rel, std::fs::read(&path).unwrap());
            }
        }
    }
    out
}

fn kiln_render(args: &[&str]) -> (bool, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_kiln"))
        .arg("render")
        .args(args)
        .output()
        .expect("kiln runs");
    let text = String::from_utf8_lossy(&output.stdout).into_owned()
        + &String::from_utf8_lossy(&output.stderr);
    (output.status.success(), text)
}

#[test]
fn render_all_writes_exactly_what_the_library_renders() {
    let dir = tempfile::tempdir().unwrap();
    let clusters = crate_root().join("examples/clusters");
    let out = dir.path().join("out");
    let (ok, text) = kiln_render(&[
        "--all",
        "--clusters",
        clusters.to_str().unwrap(),
        "--templates",
        dir.path().join("no-templates").to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(ok, "{text}");
    let expected = render(
        &example_clusters(),
        &kiln::render::RenderSettings::default(),
    );
    assert_eq!(files_under(&out), expected);
}

#[test]
fn render_one_cluster_and_a_missing_one() {
    let dir = tempfile::tempdir().unwrap();
    let clusters = crate_root().join("examples/clusters");
    let out = dir.path().join("out");
    let (ok, text) = kiln_render(&[
        "staging",
        "--clusters",
        clusters.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(ok, "{text}");
    let files = files_under(&out);
    assert!(files.contains_key("gitops/bootstrap/staging/registration.yaml"));
    assert!(!files.keys().any(|k| k.contains("production")), "{files:?}");

    let (ok, text) = kiln_render(&[
        "nosuch",
        "--clusters",
        clusters.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(!ok);
    assert!(text.contains("nosuch.yaml"), "{text}");
}
