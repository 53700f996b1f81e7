//! The Debian package (issue 28): `cargo deb --no-build` over the binary this test run built (never a
//! second build), then its contents and control fields read back with `dpkg-deb`, and the packaged
//! binary run. cargo-deb is installed at a pinned version by scripts/setup-test-env.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The version scripts/setup-test-env installs; the package layout below is what it makes.
const CARGO_DEB: &str = "cargo-deb 3.8.0";

fn manifest_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn run(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn cargo_deb_version() -> String {
    let out = Command::new(env!("CARGO"))
        .args(["deb", "--version"])
        .output()
        .expect("running cargo");
    let version = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    assert!(
        out.status.success() && version == CARGO_DEB,
        "cargo-deb is missing or not the pinned version (found {version:?}, {}): run \
         scripts/setup-test-env, which installs it with \
         `cargo install --locked cargo-deb --version =3.8.0`",
        String::from_utf8_lossy(&out.stderr).trim()
    );
    version
}

/// `dpkg-deb -c` as (mode, path) pairs, paths without the leading `.`.
fn listing(deb: &Path) -> Vec<(String, String)> {
    run(Command::new("dpkg-deb").arg("-c").arg(deb))
        .lines()
        .filter_map(|l| {
            let fields: Vec<&str> = l.split_whitespace().collect();
            let path = fields.get(5)?.trim_start_matches('.');
            Some((fields[0].to_owned(), path.to_owned()))
        })
        .collect()
}

#[test]
fn cargo_deb_packages_the_built_binary_with_unit_examples_completions_and_man_pages() {
    cargo_deb_version();
    let binary = PathBuf::from(env!("CARGO_BIN_EXE_kiln"));
    // target/debug/kiln → target: where cargo-deb looks for the dev profile's binary, and where the
    // manifest's assets (target/kiln-assets/…) are generated.
    let target = binary.parent().and_then(Path::parent).unwrap().to_owned();
    let assets = target.join("kiln-assets");
    let _ = std::fs::remove_dir_all(&assets);
    run(Command::new(&binary).arg("generate-assets").arg(&assets));

    let out = tempfile::tempdir().unwrap();
    run(Command::new(env!("CARGO"))
        .args(["deb", "--no-build", "--profile", "dev", "--fast", "--quiet"])
        .arg("--output")
        .arg(out.path())
        .env("CARGO_TARGET_DIR", &target)
        .current_dir(manifest_dir()));
    let deb = std::fs::read_dir(out.path())
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|x| x == "deb"))
        .expect("cargo deb wrote no .deb");

    let info = run(Command::new("dpkg-deb").arg("-I").arg(&deb));
    let field = |name: &str| -> String {
        info.lines()
            .find_map(|l| l.trim().strip_prefix(&format!("{name}: ")))
            .unwrap_or_else(|| panic!("no {name} in the control file:\n{info}"))
            .to_owned()
    };
    assert_eq!(field("Package"), "kiln");
    assert_eq!(field("Version"), format!("{}-1", env!("CARGO_PKG_VERSION")));
    let depends = field("Depends");
    for dep in ["git", "openssh-client", "libc6"] {
        assert!(depends.contains(dep), "Depends lacks {dep}: {depends}");
    }
    // Nothing under /etc is shipped, so no conffile: the operator's kiln.toml is never the package's.
    assert!(
        !info.contains(" conffiles"),
        "the package has conffiles:\n{info}"
    );

    let files = listing(&deb);
    let mode_of = |path: &str| -> &str {
        files
            .iter()
            .find(|(_, p)| p == path)
            .map(|(m, _)| m.as_str())
            .unwrap_or_else(|| panic!("{path} is not in the package: {files:#?}"))
    };
    assert_eq!(mode_of("/usr/bin/kiln"), "-rwxr-xr-x");
    for path in [
        "/usr/lib/systemd/system/kiln.service",
        "/usr/share/doc/kiln/README.md",
        "/usr/share/doc/kiln/service.md",
        "/usr/share/doc/kiln/examples/kiln.toml",
        "/usr/share/bash-completion/completions/kiln",
        "/usr/share/zsh/vendor-completions/_kiln",
        "/usr/share/fish/vendor_completions.d/kiln.fish",
        "/usr/share/man/man1/kiln.1.gz",
        "/usr/share/man/man1/kiln-run.1.gz",
        "/usr/share/man/man1/kiln-plan.1.gz",
    ] {
        assert_eq!(mode_of(path), "-rw-r--r--", "{path}");
    }
    for entry in std::fs::read_dir(manifest_dir().join("examples/clusters")).unwrap() {
        let name = entry.unwrap().file_name();
        mode_of(&format!(
            "/usr/share/doc/kiln/examples/clusters/{}",
            name.to_string_lossy()
        ));
    }
    assert!(
        !files.iter().any(|(_, p)| p.starts_with("/etc/")),
        "the package ships files under /etc: {files:#?}"
    );

    // What is inside works: the binary runs, and the unit is the repository's.
    let root = tempfile::tempdir().unwrap();
    run(Command::new("dpkg-deb")
        .arg("-x")
        .arg(&deb)
        .arg(root.path()));
    let version = run(Command::new(root.path().join("usr/bin/kiln")).arg("--version"));
    assert_eq!(
        version.trim(),
        format!("kiln {}", env!("CARGO_PKG_VERSION"))
    );
    assert_eq!(
        std::fs::read(root.path().join("usr/lib/systemd/system/kiln.service")).unwrap(),
        std::fs::read(manifest_dir().join("systemd/kiln.service")).unwrap()
    );
    let completion = std::fs::read_to_string(
        root.path()
            .join("usr/share/bash-completion/completions/kiln"),
    )
    .unwrap();
    assert!(
        completion.contains("validate") && completion.contains("--config"),
        "the bash completion does not know kiln's commands"
    );
}
