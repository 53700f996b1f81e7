//! Vault authentication against a real OpenBao: AppRole login, renewal, expiry, re-login after a
//! 403, the idle keeper, token files.

use std::sync::Arc;
use std::time::Duration;

use kiln::secrets::{
    CustomMetadata, ReadOutcome, SecretStore, SecretsError, VaultAuth, VaultStore, secret_data,
};

use super::bao::Bao;
use super::vault_store::{approle, path, settings};

#[tokio::test]
async fn approle_login_renewal_expiry_and_relogin_after_403() {
    let bao = Bao::start().await;
    bao.enable_kv2("admin").await;
    let auth = approle(&bao, "9s").await;
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
    tokio::time::sleep(Duration::from_millis(6800)).await;
    assert!(matches!(
        store.read(&p).await.unwrap(),
        ReadOutcome::Present(_)
    ));
    assert_eq!(
        (store.auth_stats().logins, store.auth_stats().renewals),
        (1, 1)
    );

    // Idle past the whole TTL: the old token is dead, kiln logs in again before asking.
    tokio::time::sleep(Duration::from_millis(9500)).await;
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
    let auth = approle(&bao, "9s").await;
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
    // Idle past the 9 s TTL: without renewal the token would be dead and need a new login.
    tokio::time::sleep(Duration::from_secs(12)).await;
    let stats = store.auth_stats();
    assert_eq!(stats.logins, 1, "{stats:?}");
    assert!(stats.renewals >= 1, "{stats:?}");
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
async fn a_renewable_token_from_a_file_is_renewed_not_reread() {
    let bao = Bao::start().await;
    bao.enable_kv2("admin").await;
    bao.api(
        "PUT",
        "sys/policies/acl/kiln",
        Some(serde_json::json!({"policy": "path \"admin/*\" { capabilities = [\"create\",\"read\",\"update\",\"patch\",\"delete\",\"list\"] }"})),
    )
    .await;
    let created = bao
        .api(
            "POST",
            "auth/token/create",
            Some(serde_json::json!({"policies": ["kiln"], "ttl": "12s", "explicit_max_ttl": "5m", "renewable": true})),
        )
        .await
        .unwrap();
    let token = created["auth"]["client_token"].as_str().unwrap().to_owned();
    let file = bao.write_file("kiln-token", &token);
    let store =
        VaultStore::new(settings(&bao, "admin", VaultAuth::TokenFile(file.clone()))).unwrap();
    let p = path("kubernetes/f/talos");
    store
        .create(
            &p,
            &secret_data([("talosconfig", "tc")]),
            &CustomMetadata::new(),
        )
        .await
        .unwrap();
    // In the last third of its 12 s: renewed, the file is not re-read.
    tokio::time::sleep(Duration::from_millis(8000)).await;
    assert!(matches!(
        store.read(&p).await.unwrap(),
        ReadOutcome::Present(_)
    ));
    assert_eq!(
        (store.auth_stats().logins, store.auth_stats().renewals),
        (1, 1)
    );
    // Renewed, the token outlives its first TTL.
    tokio::time::sleep(Duration::from_millis(4500)).await;
    let (code, _) = bao
        .api_status(
            "POST",
            "auth/token/lookup",
            Some(serde_json::json!({ "token": token })),
        )
        .await;
    assert_eq!(
        code, 200,
        "the renewed token is still alive after its first 12 s"
    );
    // A token file rotated by systemd is picked up on the next login (here: after a 403).
    bao.api(
        "POST",
        "auth/token/revoke",
        Some(serde_json::json!({ "token": token })),
    )
    .await;
    let fresh = bao
        .api(
            "POST",
            "auth/token/create",
            Some(serde_json::json!({"policies": ["kiln"], "ttl": "1m"})),
        )
        .await
        .unwrap();
    std::fs::write(&file, fresh["auth"]["client_token"].as_str().unwrap()).unwrap();
    assert!(matches!(
        store.read(&p).await.unwrap(),
        ReadOutcome::Present(_)
    ));
    assert_eq!(store.auth_stats().logins, 2);
}
