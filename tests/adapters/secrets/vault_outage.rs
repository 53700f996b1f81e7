//! A sealed or unreachable Vault: clear, retryable errors, and recovery within the retries.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use kiln::secrets::{
    CustomMetadata, ReadOutcome, RetryPolicy, SecretStore, SecretsError, VaultAuth, VaultSettings,
    VaultStore, secret_data,
};

use super::bao::{Bao, free_port};
use super::vault_store::{path, root_store, settings};

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
        jitter: 0.0,
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
            jitter: 0.0,
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
            jitter: 0.0,
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
