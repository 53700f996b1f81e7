//! The Vault backend against a real OpenBao: the shared behaviour, then auth, sealing, outages,
//! mounts, TLS and what reaches the logs.

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kiln::secrets::{
    CustomMetadata, Gone, ReadOutcome, RetryPolicy, SecretPath, SecretStore, SecretsError,
    VaultAuth, VaultSettings, VaultStore, meta_keys, secret_data,
};
use serde_json::json;

use super::bao::{Bao, free_port};
use super::behaviour;

fn settings(bao: &Bao, mount: &str, auth: VaultAuth) -> VaultSettings {
    VaultSettings {
        addr: bao.addr.clone(),
        ca_file: bao.ca_file.clone(),
        mount: mount.into(),
        auth,
        retry: RetryPolicy {
            attempts: 3,
            initial: Duration::from_millis(50),
            max: Duration::from_millis(200),
        },
        timeout: Duration::from_secs(10),
    }
}

fn root_store(bao: &Bao, mount: &str) -> VaultStore {
    VaultStore::new(settings(
        bao,
        mount,
        VaultAuth::TokenFile(bao.root_token_file()),
    ))
    .unwrap()
}

fn path(p: &str) -> SecretPath {
    SecretPath::parse(p).unwrap()
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

/// AppRole role `kiln` with a short token TTL and a policy on the `admin` mount; returns the
/// role-id and secret-id files.
async fn approle(bao: &Bao, ttl: &str) -> VaultAuth {
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
async fn approle_login_renewal_expiry_and_relogin_after_403() {
    let bao = Bao::start().await;
    bao.enable_kv2("admin").await;
    let auth = approle(&bao, "6s").await;
    let store = VaultStore::new(settings(&bao, "admin", auth)).unwrap();
    let p = path("kubernetes/a/talos");
    store
        .create(
            &p,
            &secret_data([("talosconfig", "tc")]),
            &CustomMetadata::new(),
        )
        .await
        .unwrap();
    assert_eq!(
        (store.auth_stats().logins, store.auth_stats().renewals),
        (1, 0)
    );

    // In the last third of the TTL: renewed, not replaced.
    tokio::time::sleep(Duration::from_millis(4300)).await;
    assert!(matches!(
        store.read(&p).await.unwrap(),
        ReadOutcome::Present(_)
    ));
    assert_eq!(
        (store.auth_stats().logins, store.auth_stats().renewals),
        (1, 1)
    );

    // Idle past the whole TTL: the old token is dead, kiln logs in again before asking.
    tokio::time::sleep(Duration::from_millis(6500)).await;
    assert!(matches!(
        store.read(&p).await.unwrap(),
        ReadOutcome::Present(_)
    ));
    assert_eq!(store.auth_stats().logins, 2);

    // The token is revoked behind kiln's back: the 403 triggers one fresh login.
    bao.api("PUT", "sys/leases/revoke-prefix/auth/approle", None)
        .await;
    assert!(matches!(
        store.read(&p).await.unwrap(),
        ReadOutcome::Present(_)
    ));
    assert_eq!(store.auth_stats().logins, 3);

    // A mount the policy does not cover: a clear, non-retryable 403 after the one re-login.
    let other_mount =
        VaultStore::new(settings(&bao, "secret", store.settings().auth.clone())).unwrap();
    match other_mount.read(&path("x")).await {
        Err(e @ SecretsError::Auth { .. }) => {
            assert!(!e.is_retryable());
            assert!(e.to_string().contains("403"), "{e}");
        }
        other => panic!("a path outside the policy must be an auth error, got {other:?}"),
    }
}

#[tokio::test]
async fn an_idle_store_renews_its_token_before_expiry() {
    let bao = Bao::start().await;
    bao.enable_kv2("admin").await;
    let auth = approle(&bao, "6s").await;
    let store = Arc::new(VaultStore::new(settings(&bao, "admin", auth)).unwrap());
    let p = path("kubernetes/i/talos");
    store
        .create(
            &p,
            &secret_data([("talosconfig", "tc")]),
            &CustomMetadata::new(),
        )
        .await
        .unwrap();
    let keeper = store.keep_token_alive();
    // Idle for twice the TTL: without renewal the token would be dead and need a new login.
    tokio::time::sleep(Duration::from_secs(12)).await;
    let stats = store.auth_stats();
    assert_eq!(stats.logins, 1, "{stats:?}");
    assert!(stats.renewals >= 2, "{stats:?}");
    assert!(matches!(
        store.read(&p).await.unwrap(),
        ReadOutcome::Present(_)
    ));
    assert_eq!(store.auth_stats().logins, 1);
    keeper.abort();
}

#[tokio::test]
async fn a_bad_token_file_is_a_clear_login_error() {
    let bao = Bao::start().await;
    let store = VaultStore::new(settings(
        &bao,
        "secret",
        VaultAuth::TokenFile(bao.write_file("bad-token", "not-a-token")),
    ))
    .unwrap();
    match store.read(&path("x")).await {
        Err(e @ SecretsError::Login { .. }) => {
            assert!(e.to_string().contains("403"), "{e}");
            assert!(!e.to_string().contains("not-a-token"), "{e}");
        }
        other => panic!("{other:?}"),
    }
    let missing = VaultStore::new(settings(
        &bao,
        "secret",
        VaultAuth::TokenFile(bao.dir.path().join("nope")),
    ))
    .unwrap();
    match missing.read(&path("x")).await {
        Err(e @ SecretsError::Config(_)) => assert!(e.to_string().contains("nope"), "{e}"),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn sealed_is_a_clear_retryable_error_and_unsealing_recovers() {
    let bao = Bao::start().await;
    bao.enable_kv2("admin").await;
    let store = root_store(&bao, "admin");
    let p = path("kubernetes/s/talos");
    store
        .create(
            &p,
            &secret_data([("talosconfig", "tc")]),
            &CustomMetadata::new(),
        )
        .await
        .unwrap();
    bao.seal().await;
    match store.read(&p).await {
        Err(e @ SecretsError::Sealed { .. }) => {
            assert!(e.is_retryable());
            assert!(
                e.to_string().contains("sealed") && e.to_string().contains(&bao.addr),
                "{e}"
            );
        }
        other => panic!("a sealed Vault must say so, got {other:?}"),
    }
    // Unsealed while kiln is retrying: the same call succeeds.
    let mut patient = settings(&bao, "admin", VaultAuth::TokenFile(bao.root_token_file()));
    patient.retry = RetryPolicy {
        attempts: 30,
        initial: Duration::from_millis(100),
        max: Duration::from_millis(200),
    };
    let patient = VaultStore::new(patient).unwrap();
    let (read, ()) = tokio::join!(patient.read(&p), async {
        tokio::time::sleep(Duration::from_millis(700)).await;
        bao.unseal().await;
    });
    assert!(matches!(read.unwrap(), ReadOutcome::Present(_)));
}

#[tokio::test]
async fn vault_down_is_retried_then_reported_and_recovers_when_back() {
    let port = free_port();
    let addr = format!("http://127.0.0.1:{port}");
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "whatever\n").unwrap();
    let base = VaultSettings {
        addr: addr.clone(),
        ca_file: None,
        mount: "secret".into(),
        auth: VaultAuth::TokenFile(token),
        retry: RetryPolicy {
            attempts: 3,
            initial: Duration::from_millis(20),
            max: Duration::from_millis(50),
        },
        timeout: Duration::from_secs(5),
    };
    let store = VaultStore::new(base.clone()).unwrap();
    match store.read(&path("x")).await {
        Err(e @ SecretsError::Unavailable { attempts: 3, .. }) => {
            assert!(e.is_retryable());
            assert!(e.to_string().contains(&addr), "{e}");
        }
        other => panic!("an unreachable Vault must be Unavailable, got {other:?}"),
    }

    // The server comes up while kiln is retrying (its root token is known in advance).
    let root = "kiln-test-root-late".to_owned();
    let token_path = dir.path().join("late-token");
    std::fs::write(&token_path, format!("{root}\n")).unwrap();
    let store = VaultStore::new(VaultSettings {
        auth: VaultAuth::TokenFile(token_path),
        retry: RetryPolicy {
            attempts: 60,
            initial: Duration::from_millis(100),
            max: Duration::from_millis(250),
        },
        ..base
    })
    .unwrap();
    let started: Arc<Mutex<Option<Bao>>> = Arc::default();
    let x = path("x");
    let (result, ()) = tokio::join!(store.read(&x), async {
        tokio::time::sleep(Duration::from_millis(800)).await;
        let bao = Bao::start_with(port, false, root.clone()).await;
        *started.lock().unwrap() = Some(bao);
    });
    assert_eq!(result.unwrap(), ReadOutcome::Absent);
    drop(started);
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
    no_ca.retry.attempts = 1;
    match VaultStore::new(no_ca).unwrap().read(&p).await {
        Err(SecretsError::Unavailable { reason, .. }) => {
            assert!(reason.to_lowercase().contains("certificate"), "{reason}")
        }
        other => panic!("an unknown CA must be refused, got {other:?}"),
    }
}

/// Every event of a full cycle, at TRACE, from kiln and its HTTP stack, written as text.
#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn no_secret_value_reaches_the_logs() {
    let bao = Bao::start().await;
    bao.enable_kv2("admin").await;
    let auth = approle(&bao, "1m").await;
    let (role_id, secret_id) = match &auth {
        VaultAuth::AppRole {
            role_id_file,
            secret_id_file,
            ..
        } => (
            std::fs::read_to_string(role_id_file)
                .unwrap()
                .trim()
                .to_owned(),
            std::fs::read_to_string(secret_id_file)
                .unwrap()
                .trim()
                .to_owned(),
        ),
        _ => unreachable!(),
    };
    let capture = Capture::default();
    let sink = capture.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .with_writer(move || sink.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let store = VaultStore::new(settings(&bao, "admin", auth)).unwrap();
    let p = path("kubernetes/r/kubeconfig");
    let values = [
        "kc-value-7f3a9c",
        "client-key-e81b22",
        "client-key-rotated-55aa01",
    ];
    let created = store
        .create(
            &p,
            &secret_data([("kubeconfig", values[0]), ("client.key", values[1])]),
            &CustomMetadata::from([(meta_keys::EXPIRES_AT.into(), "2027-01-01T00:00:00Z".into())]),
        )
        .await
        .unwrap();
    let read = store.read(&p).await.unwrap();
    store
        .overwrite(&p, 1, &secret_data([("client.key", values[2])]))
        .await
        .unwrap();
    let conflict = store
        .overwrite(&p, 1, &secret_data([("client.key", values[2])]))
        .await
        .unwrap_err();
    let again = store.read(&p).await.unwrap();
    // What a caller would log: the results themselves.
    tracing::info!(?created, ?read, ?again, %conflict, "cycle done");
    drop(_guard);

    let text = String::from_utf8(capture.0.lock().unwrap().clone()).unwrap();
    assert!(
        text.contains("cycle done") && text.contains("kubernetes/r/kubeconfig"),
        "capture works: {text}"
    );
    assert!(text.contains("[redacted]"));
    for secret in values
        .iter()
        .map(|s| s.to_string())
        .chain([role_id, secret_id])
    {
        assert!(
            !text.contains(&secret),
            "secret value found in the logs:\n{text}"
        );
    }
    // Nor any token (OpenBao service tokens look like `s.` + 24 characters).
    let token = regex::Regex::new(r"\bs\.[A-Za-z0-9]{24}\b").unwrap();
    assert!(
        token.find(&text).is_none(),
        "a token reached the logs:\n{text}"
    );
    assert!(!text.contains(&bao.root_token));
}
