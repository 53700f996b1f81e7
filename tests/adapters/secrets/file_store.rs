//! The file store: the shared behaviour, plus what a file on disk must guarantee.

use std::os::unix::fs::PermissionsExt;

use kiln::secrets::{
    CustomMetadata, FileStore, SecretPath, SecretStore, SecretsError, secret_data,
};

use super::behaviour;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_store_passes_the_behavioural_suite() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("secrets");
    // Two handles on one folder: each `flock`s its own descriptor, as two kiln processes would.
    let a = FileStore::open(&root).unwrap();
    let b = FileStore::open(&root).unwrap();
    behaviour::run_all(&a, &b, "kubernetes").await;
}

#[tokio::test]
async fn kiln_toml_file_backend_lives_in_the_state_dir() {
    let dir = tempfile::tempdir().unwrap();
    let cfg: kiln::config::SecretsConfig = toml::from_str("backend = \"file\"\n").unwrap();
    let opened = kiln::secrets::open(&cfg, dir.path()).unwrap();
    opened.store.check().await.unwrap();
    let p = SecretPath::parse("kubernetes/c/talos").unwrap();
    opened
        .store
        .create(
            &p,
            &secret_data([("talosconfig", "x")]),
            &CustomMetadata::new(),
        )
        .await
        .unwrap();
    assert!(dir.path().join("secrets/kubernetes/c/talos.json").is_file());
}

/// Set in the children of `two_processes_never_both_create`.
const CHILD_ROOT: &str = "KILN_TEST_SECRETS_CHILD_ROOT";
const PATHS: usize = 40;

/// Several OS processes (this test binary re-run as writers) and this one race to create the same
/// paths; across all of them each path has exactly one creator.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_never_both_create() {
    let create_all = |root: std::path::PathBuf, who: String| async move {
        let store = FileStore::open(root).unwrap();
        let mut won = Vec::new();
        for i in 0..PATHS {
            let p = SecretPath::parse(&format!("kubernetes/c{i}/secrets")).unwrap();
            let out = store
                .create(
                    &p,
                    &secret_data([("cluster-uid", who.clone())]),
                    &CustomMetadata::new(),
                )
                .await
                .unwrap();
            if matches!(out, kiln::secrets::CreateOutcome::Created { .. }) {
                won.push(i);
            }
        }
        won
    };
    if let Some(root) = std::env::var_os(CHILD_ROOT) {
        // Child: report what this process created, one index per line.
        let won = create_all(root.into(), format!("pid-{}", std::process::id())).await;
        for i in won {
            println!("WON {i}");
        }
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("secrets");
    let exe = std::env::current_exe().unwrap();
    let children: Vec<_> = (0..3)
        .map(|_| {
            tokio::process::Command::new(&exe)
                .args([
                    "--exact",
                    "file_store::two_processes_never_both_create",
                    "--nocapture",
                    "--test-threads=1",
                ])
                .env(CHILD_ROOT, &root)
                .kill_on_drop(true)
                .output()
        })
        .collect();
    let (mine, outputs) = tokio::join!(
        create_all(root.clone(), "parent".into()),
        futures::future::join_all(children)
    );
    let mut creators = vec![0usize; PATHS];
    for i in mine {
        creators[i] += 1;
    }
    for out in outputs {
        let out = out.unwrap();
        assert!(
            out.status.success(),
            "child failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            // libtest may print "test … " on the same line before the child's first output.
            if let Some((_, i)) = line.split_once("WON ") {
                creators[i.trim().parse::<usize>().unwrap()] += 1;
            }
        }
    }
    assert_eq!(
        creators,
        vec![1; PATHS],
        "each path has exactly one creator across processes"
    );
    // And each stored value is its creator's, version 1.
    let store = FileStore::open(&root).unwrap();
    for i in 0..PATHS {
        let p = SecretPath::parse(&format!("kubernetes/c{i}/secrets")).unwrap();
        match store.read(&p).await.unwrap() {
            kiln::secrets::ReadOutcome::Present(s) => assert_eq!(s.version, 1),
            other => panic!("{other:?}"),
        }
    }
}

#[tokio::test]
async fn files_are_private_and_writes_leave_no_temporaries() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("secrets");
    let store = FileStore::open(&root).unwrap();
    let p = SecretPath::parse("kubernetes/c/talos").unwrap();
    store
        .create(
            &p,
            &secret_data([("talosconfig", "tc")]),
            &CustomMetadata::new(),
        )
        .await
        .unwrap();
    store
        .overwrite(&p, 1, &secret_data([("talosconfig", "tc2")]))
        .await
        .unwrap();
    let file = root.join("kubernetes/c/talos.json");
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&file), 0o600);
    assert_eq!(mode(&root), 0o700);
    assert_eq!(mode(&root.join("kubernetes/c")), 0o700);
    let names: Vec<_> = std::fs::read_dir(root.join("kubernetes/c"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(
        names,
        vec!["talos.json".to_owned()],
        "no temporary file is left behind"
    );
}

#[tokio::test]
async fn a_corrupt_file_is_an_error_not_absent() {
    let dir = tempfile::tempdir().unwrap();
    let store = FileStore::open(dir.path()).unwrap();
    let p = SecretPath::parse("kubernetes/c/secrets").unwrap();
    std::fs::create_dir_all(dir.path().join("kubernetes/c")).unwrap();
    std::fs::write(dir.path().join("kubernetes/c/secrets.json"), b"{ half").unwrap();
    match store.read(&p).await {
        Err(SecretsError::Corrupt { path, .. }) => assert!(path.ends_with("secrets.json")),
        other => panic!("a corrupt file must not read as {other:?}"),
    }
    assert!(
        store
            .create(&p, &secret_data([("k", "v")]), &CustomMetadata::new())
            .await
            .is_err(),
        "and must not be overwritten by a create"
    );
    assert_ne!(
        std::fs::read(dir.path().join("kubernetes/c/secrets.json")).unwrap(),
        Vec::<u8>::new()
    );
}
