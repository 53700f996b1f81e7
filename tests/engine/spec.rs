//! Intent-file validation through the real `kiln` binary, on fixtures that each break one rule
//! (or, in `cross-*` folders, break a rule only together). Every fixture states what it expects in
//! its header: `# expect: <field path> @ <line>` (`-` when only the line is asserted, as for YAML
//! syntax errors) and, for warnings, `# warn: <field path> @ <line>`.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

#[path = "spec/limits.rs"]
mod limits;
#[path = "spec/measure.rs"]
mod measure;

fn crate_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn fixtures(kind: &str) -> PathBuf {
    crate_root().join("tests/fixtures").join(kind)
}

fn kiln(args: &[&Path]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kiln"))
        .arg("validate")
        .args(args)
        .current_dir(crate_root())
        .output()
        .expect("run the kiln binary")
}

/// `(path, line)` pairs from the header lines starting with `# {tag}: `.
fn expectations(file: &Path, tag: &str) -> Vec<(String, usize)> {
    let text = std::fs::read_to_string(file).unwrap();
    let prefix = format!("# {tag}: ");
    let out: Vec<(String, usize)> = text
        .lines()
        .take_while(|l| l.starts_with('#'))
        .filter_map(|l| l.strip_prefix(&prefix))
        .map(|rest| {
            let (path, line) = rest.rsplit_once(" @ ").expect("`path @ line`");
            (path.to_owned(), line.parse().expect("a line number"))
        })
        .collect();
    assert!(
        !out.is_empty(),
        "{} states no `# {tag}:` expectation",
        file.display()
    );
    out
}

/// Asserts that `stderr` has a line for `file` at `line` naming `path` (`-`: any path).
fn assert_reported(stderr: &str, file: &Path, path: &str, line: usize, warning: bool) {
    let head = format!("{}:{line}:", file.display());
    let field = match (warning, path) {
        (false, "-") => String::new(),
        (false, p) => format!(": {p}: "),
        (true, p) => format!(": warning: {p}: "),
    };
    assert!(
        stderr
            .lines()
            .any(|l| l.starts_with(&head) && l.contains(&field)),
        "expected a line starting `{head}` with `{field}`, got:\n{stderr}"
    );
}

fn yaml_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let p = entry.unwrap().path();
        if p.is_dir() {
            out.extend(yaml_files(&p));
        } else if p.extension().is_some_and(|e| e == "yaml") {
            out.push(p);
        }
    }
    out.sort();
    out
}

#[test]
fn every_single_file_fixture_fails_naming_its_file_field_and_line() {
    let dir = fixtures("invalid");
    let files: Vec<PathBuf> = yaml_files(&dir)
        .into_iter()
        .filter(|p| p.parent() == Some(dir.as_path()))
        .collect();
    assert!(files.len() >= 30, "only {} invalid fixtures", files.len());
    for file in &files {
        let rel = file.strip_prefix(crate_root()).unwrap();
        let out = kiln(&[rel]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            out.status.code(),
            Some(1),
            "{} should be invalid; stderr:\n{stderr}",
            rel.display()
        );
        for (path, line) in expectations(file, "expect") {
            assert_reported(&stderr, rel, &path, line, false);
        }
        // No line of the output is a panic or an unlocated message about this file.
        for l in stderr
            .lines()
            .filter(|l| l.starts_with(&*rel.to_string_lossy()))
        {
            let after = &l[rel.to_string_lossy().len()..];
            assert!(
                after.starts_with(':') && after[1..].starts_with(|c: char| c.is_ascii_digit()),
                "diagnostic without a line: {l}"
            );
        }
    }
}

#[test]
fn cross_file_collisions_fail_every_file_involved_and_each_file_alone_is_valid() {
    let sets: Vec<PathBuf> = std::fs::read_dir(fixtures("invalid"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir())
        .collect();
    assert!(sets.len() >= 5, "cross-file sets: {sets:?}");
    for set in sets {
        let files: Vec<PathBuf> = yaml_files(&set)
            .into_iter()
            .map(|p| p.strip_prefix(crate_root()).unwrap().to_owned())
            .collect();
        assert!(files.len() >= 2, "{}", set.display());
        for f in &files {
            let alone = kiln(&[f]);
            assert_eq!(
                alone.status.code(),
                Some(0),
                "{} alone should be valid: {}",
                f.display(),
                String::from_utf8_lossy(&alone.stderr)
            );
        }
        let refs: Vec<&Path> = files.iter().map(PathBuf::as_path).collect();
        let out = kiln(&refs);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{}: {stderr}", set.display());
        for f in &files {
            for (path, line) in expectations(&crate_root().join(f), "expect") {
                assert_reported(&stderr, f, &path, line, false);
            }
        }
        assert!(
            stderr.contains(&format!(
                "{} of {} cluster file(s) invalid",
                files.len(),
                files.len()
            )),
            "every file of a collision is invalid: {stderr}"
        );
    }
}

#[test]
fn warnings_are_printed_and_never_fail() {
    let files = yaml_files(&fixtures("warnings"));
    assert!(files.len() >= 3);
    for file in &files {
        let rel = file.strip_prefix(crate_root()).unwrap();
        let out = kiln(&[rel]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(0), "{}: {stderr}", rel.display());
        for (path, line) in expectations(file, "warn") {
            assert_reported(&stderr, rel, &path, line, true);
        }
    }
}

#[test]
fn the_examples_are_valid() {
    let out = kiln(&[Path::new("examples/clusters")]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("2 cluster file(s) valid"));
}

#[test]
fn a_missing_path_is_an_error() {
    let out = kiln(&[Path::new("tests/fixtures/no-such-folder")]);
    assert_ne!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no-such-folder"));
}

const SCHEMA: &str = "schemas/cluster.schema.json";

#[test]
fn the_committed_schema_is_what_kiln_schema_prints() {
    let out = Command::new(env!("CARGO_BIN_EXE_kiln"))
        .arg("schema")
        .output()
        .unwrap();
    assert!(out.status.success());
    let committed = std::fs::read(crate_root().join(SCHEMA)).unwrap();
    assert!(
        committed == out.stdout,
        "{SCHEMA} is stale: regenerate it with `cargo run -- schema > {SCHEMA}` and commit it"
    );
}

#[test]
fn the_examples_validate_against_the_committed_schema() {
    let schema: serde_json::Value =
        serde_json::from_slice(&std::fs::read(crate_root().join(SCHEMA)).unwrap()).unwrap();
    let validator = jsonschema::options()
        .should_validate_formats(true)
        .build(&schema)
        .expect("the committed schema compiles");
    let examples = yaml_files(&crate_root().join("examples/clusters"));
    assert_eq!(examples.len(), 2);
    for file in examples {
        let text = std::fs::read_to_string(&file).unwrap();
        assert!(
            text.starts_with("# yaml-language-server: $schema=../../schemas/cluster.schema.json\n"),
            "{} lacks the modeline",
            file.display()
        );
        let doc: serde_json::Value = serde_yaml::from_str(&text).unwrap();
        let errors: Vec<String> = validator.iter_errors(&doc).map(|e| e.to_string()).collect();
        assert!(errors.is_empty(), "{}: {errors:?}", file.display());
        // And the schema is not vacuous: breaking a field breaks validation.
        let mut broken = doc.clone();
        broken["spec"]["network"]["vip"] = "not-an-ip".into();
        assert!(!validator.is_valid(&broken));
    }
}

#[test]
fn kubernetes_outside_the_talos_range_names_the_supported_range() {
    let file = fixtures("invalid").join("kubernetes-outside-talos-range.yaml");
    let out = kiln(&[&file]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("Kubernetes v1.30.4 does not run on Talos v1.13.9")
            && stderr.contains("1.31–1.36"),
        "the message names the pair and the supported range:\n{stderr}"
    );
}
