//! The Vault backend against a real OpenBao: the shared behaviour, what only KV v2 on a server can be
//! put into (destroyed versions, metadata-only paths), mounts and TLS. Helpers for the other Vault
//! test modules live here too.

use std::time::Duration;

use kiln::secrets::{
    CustomMetadata, Gone, MetadataPatch, ReadOutcome, RetryPolicy, SecretPath, SecretStore,
    SecretsError, VaultAuth, VaultSettings, VaultStore, secret_data,
};
use serde_json::json;

use super::bao::Bao;
use super::behaviour;

pub fn settings(bao: &Bao, mount: &str, auth: VaultAuth) -> VaultSettings {
    VaultSettings {
        addr: bao.addr.clone(),
        ca_file: bao.ca_file.clone(),
        mount: mount.into(),
        auth,
        retry: RetryPolicy {
            attempts: 3,
            initial: Duration::from_millis(50),
            max: Duration::from_millis(200),
            jitter: 0.0,
        },
        timeout: Duration::from_secs(10),
    }
}

pub fn root_store(bao: &Bao, mount: &str) -> VaultStore {
    VaultStore::new(settings(
        bao,
        mount,
        VaultAuth::TokenFile(bao.root_token_file()),
    ))
    .unwrap()
}

pub fn path(p: &str) -> SecretPath {
    SecretPath::parse(p).unwrap()
}

/// AppRole role `kiln` with a short token TTL and a policy on the `admin` mount; returns the
/// role-id and secret-id files.
pub async fn approle(bao: &Bao, ttl: &str) -> VaultAuth {
    bao.api("POST", "sys/auth/approle", Some(json!({"type": "approle"})))
        .await;
    bao.api(
        "PUT",
        "sys/policies/acl/kiln",
        Some(json!({"policy": "path \"admin/*\" { capabilities = [\"create\",\"read\",\"update\",\"patch\",\"delete\",\"list\"] }"})),
    )
    .await;
    bao.api(
        "POST",
        "auth/approle/role/kiln",
        Some(json!({"token_policies": ["kiln"], "token_ttl": ttl, "token_max_ttl": "5m"})),
    )
    .await;
    let role_id = bao
        .api("GET", "auth/approle/role/kiln/role-id", None)
        .await
        .unwrap()["data"]["role_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let secret_id = bao
        .api("POST", "auth/approle/role/kiln/secret-id", None)
        .await
        .unwrap()["data"]["secret_id"]
        .as_str()
        .unwrap()
        .to_owned();
    VaultAuth::AppRole {
        mount: "approle".into(),
        role_id_file: bao.write_file("role-id", &role_id),
        secret_id_file: bao.write_file("secret-id", &secret_id),
    }
}

#[tokio::test]
async fn openbao_passes_the_behavioural_suite() {
    let bao = Bao::start().await;
    bao.enable_kv2("admin").await;
    let a = root_store(&bao, "admin");
    let b = root_store(&bao, "admin");
    a.check_mount().await.unwrap();
    behaviour::run_all(&a, &b, "kubernetes").await;
}

#[tokio::test]
async fn destroyed_and_metadata_only_paths_are_not_absent() {
    let bao = Bao::start().await;
    bao.enable_kv2("admin").await;
    let store = root_store(&bao, "admin");
    let p = path("kubernetes/c/secrets");
    store
        .create(&p, &secret_data([("k", "v")]), &CustomMetadata::new())
        .await
        .unwrap();
    bao.api(
        "POST",
        "admin/destroy/kubernetes/c/secrets",
        Some(json!({"versions": [1]})),
    )
    .await;
    match store.read(&p).await.unwrap() {
        ReadOutcome::DeletedOrDestroyed {
            current_version: 1,
            state: Gone::Destroyed,
            ..
        } => {}
        other => panic!("destroyed version must be reported, got {other:?}"),
    }
    // Metadata written by hand without any version.
    bao.api(
        "POST",
        "admin/metadata/kubernetes/d/secrets",
        Some(json!({"custom_metadata": {"owner": "ops"}})),
    )
    .await;
    match store.read(&path("kubernetes/d/secrets")).await.unwrap() {
        ReadOutcome::DeletedOrDestroyed {
            state: Gone::NoVersion,
            custom_metadata,
            ..
        } => assert_eq!(
            custom_metadata.get("owner").map(String::as_str),
            Some("ops")
        ),
        other => panic!("metadata without a version must not read as absent, got {other:?}"),
    }
}

#[tokio::test]
async fn a_wrong_mount_is_named() {
    let bao = Bao::start().await;
    let store = root_store(&bao, "admin");
    match store.check_mount().await {
        Err(e @ SecretsError::WrongMount { .. }) => {
            assert!(e.to_string().contains("`admin`"), "{e}");
            assert!(!e.is_retryable());
        }
        other => panic!("a missing mount must be named, got {other:?}"),
    }
    match store.read(&path("kubernetes/c/secrets")).await {
        Err(e @ SecretsError::WrongMount { .. }) => {
            assert!(e.to_string().contains("`admin`"), "{e}")
        }
        other => panic!("{other:?}"),
    }
    bao.api(
        "POST",
        "sys/mounts/old",
        Some(json!({"type": "kv", "options": {"version": "1"}})),
    )
    .await;
    match root_store(&bao, "old").check_mount().await {
        Err(e @ SecretsError::WrongMount { .. }) => {
            let m = e.to_string();
            assert!(m.contains("`old`") && m.contains("version 1"), "{m}");
        }
        other => panic!("{other:?}"),
    }
    root_store(&bao, "secret").check_mount().await.unwrap();

    // The same through kiln.toml and the port.
    let cfg: kiln::config::SecretsConfig = toml::from_str(&format!(
        "addr = \"{}\"\ntoken_file = \"{}\"\n",
        bao.addr,
        bao.root_token_file().display()
    ))
    .unwrap();
    let opened = kiln::secrets::open(&cfg, bao.dir.path()).unwrap();
    match opened.store.check().await {
        Err(e @ SecretsError::WrongMount { .. }) => {
            assert!(e.to_string().contains("`admin`"), "{e}")
        }
        other => panic!("the default mount `admin` is not enabled yet: {other:?}"),
    }
    bao.enable_kv2("admin").await;
    opened.store.check().await.unwrap();
}

#[tokio::test]
async fn tls_is_verified_against_ca_file() {
    let bao = Bao::start_tls().await;
    let store = root_store(&bao, "secret");
    store.check_mount().await.unwrap();
    let p = path("kubernetes/t/talos");
    store
        .create(
            &p,
            &secret_data([("talosconfig", "x")]),
            &CustomMetadata::new(),
        )
        .await
        .unwrap();
    let mut no_ca = settings(&bao, "secret", VaultAuth::TokenFile(bao.root_token_file()));
    no_ca.ca_file = None;
    match VaultStore::new(no_ca).unwrap().read(&p).await {
        Err(e @ SecretsError::Tls { .. }) => {
            assert!(!e.is_retryable(), "a wrong CA is not retried");
            let m = e.to_string();
            assert!(m.contains("certificate") && m.contains("ca_file"), "{m}");
        }
        other => panic!("an unknown CA must be refused, got {other:?}"),
    }
}

/// The audit device the HA e2e tests read (`Bao::start_audited`): each write on the mount names the
/// writing token by its display name, with its operation, and the log never holds the value.
#[tokio::test]
async fn the_audit_device_names_each_writes_token_and_never_its_value() {
    let bao = Bao::start_audited().await;
    bao.enable_kv2("admin").await;
    let token = bao.create_named_token("audit-probe").await;
    let token_file = bao.write_file("probe-token", &token);
    let store = VaultStore::new(settings(&bao, "admin", VaultAuth::TokenFile(token_file))).unwrap();
    let value = format!("audit-value-{:016x}", rand::random::<u64>());
    let p = path("kubernetes/audited/secrets");
    let meta = CustomMetadata::from([("owner".to_owned(), "audit".to_owned())]);
    store
        .create(&p, &secret_data([("k", value.as_str())]), &meta)
        .await
        .unwrap();
    store.delete(&p).await.unwrap();

    let writes = bao.audited_writes("admin");
    let ops: Vec<(&str, &str)> = writes
        .iter()
        .map(|w| (w.display_name.as_str(), w.operation.as_str()))
        .collect();
    // The value, then its custom metadata, then the delete; the operator's mount and probe reads
    // are no writes on the mount.
    assert!(ops.contains(&("token-audit-probe", "create")), "{writes:?}");
    assert!(
        writes
            .iter()
            .any(|w| w.path == "admin/data/kubernetes/audited/secrets"),
        "{writes:?}"
    );
    assert!(ops.contains(&("token-audit-probe", "delete")), "{writes:?}");
    assert!(
        ops.iter().all(|(name, _)| *name == "token-audit-probe"),
        "{writes:?}"
    );
    let at_least = writes.iter().map(|w| w.at).fold(f64::MAX, f64::min);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!(
        now - at_least < 60.0 && at_least <= now,
        "audit times are wall-clock seconds"
    );
    let log = std::fs::read_to_string(bao.audit_log.as_ref().unwrap()).unwrap();
    assert!(!log.contains(&value), "the audit log holds a secret value");
    assert!(!log.contains(&token), "the audit log holds a client token");
}

/// `[ha]`'s per-request gate (`VaultStore::with_write_gate`): once it refuses, no write request of
/// any kind reaches Vault (the audit log shows none), each fails as `NotLeader`, and reads go on.
#[tokio::test]
async fn a_closed_write_gate_keeps_every_write_request_from_vault_and_lets_reads_through() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    let bao = Bao::start_audited().await;
    bao.enable_kv2("admin").await;
    let open = Arc::new(AtomicBool::new(true));
    let gate_open = open.clone();
    let store = root_store(&bao, "admin").with_write_gate(Arc::new(move |what| {
        if gate_open.load(Ordering::SeqCst) {
            Ok(())
        } else {
            Err(SecretsError::NotLeader(format!("{what} withheld")))
        }
    }));
    let p = path("kubernetes/gated/secrets");
    let meta = CustomMetadata::from([("owner".to_owned(), "gated".to_owned())]);
    store
        .create(&p, &secret_data([("k", "v")]), &meta)
        .await
        .unwrap();
    let before = bao.audited_writes("admin").len();
    assert!(before >= 2, "the value and its metadata while open");

    open.store(false, Ordering::SeqCst);
    let refused = [
        store
            .create(
                &path("kubernetes/gated/other"),
                &secret_data([("k", "v")]),
                &meta,
            )
            .await
            .err(),
        store
            .overwrite(&p, 1, &secret_data([("k", "w")]))
            .await
            .err(),
        store
            .patch_metadata(&p, &MetadataPatch::from([("owner".to_owned(), None)]))
            .await
            .err(),
        store.delete(&p).await.err(),
        store.destroy(&p).await.err(),
    ];
    for e in &refused {
        assert!(
            matches!(e, Some(SecretsError::NotLeader(_))),
            "a write not refused by the gate: {e:?}"
        );
    }
    assert_eq!(
        bao.audited_writes("admin").len(),
        before,
        "a write reached Vault through a closed gate: {:?}",
        bao.audited_writes("admin")
    );
    assert!(matches!(
        store.read(&p).await.unwrap(),
        ReadOutcome::Present(_)
    ));
}
