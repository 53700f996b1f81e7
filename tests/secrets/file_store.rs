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
