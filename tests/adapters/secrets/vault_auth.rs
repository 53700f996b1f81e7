//! Vault authentication against a real OpenBao: AppRole login, renewal, expiry, re-login after a
//! 403, the idle keeper, token files.
//!
//! Time matters here (a token's TTL), but no test sleeps a guessed amount: each polls OpenBao's own
//! view of the token (its remaining `ttl`, or whether it still exists) under a deadline.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use kiln::secrets::{
    CustomMetadata, ReadOutcome, SecretStore, SecretsError, VaultAuth, VaultStore, secret_data,
};

use super::bao::Bao;
use super::vault_store::{approle, path, settings};

/// Polls `probe` every 100 ms until it gives `Some`, failing the test with `what` after `limit`.
async fn poll<T, F, Fut>(what: &str, limit: Duration, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = probe().await {
            return v;
        }
        assert!(Instant::now() < deadline, "{what}: not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// OpenBao's record of every live token that carries the `kiln` policy (kiln's AppRole logins), by
/// accessor, so a test can watch the token kiln holds without knowing it.
async fn kiln_tokens(bao: &Bao) -> Vec<Value> {
    let (_, listed) = bao.api_status("LIST", "auth/token/accessors", None).await;
    let mut out = Vec::new();
    for accessor in listed
        .as_ref()
        .and_then(|l| l["data"]["keys"].as_array())
        .into_iter()
        .flatten()
    {
        let (code, found) = bao
            .api_status(
                "POST",
                "auth/token/lookup-accessor",
                Some(json!({ "accessor": accessor })),
            )
            .await;
        let Some(data) = found.filter(|_| code == 200).map(|f| f["data"].clone()) else {
            continue;
        };
        if data["policies"]
            .as_array()
            .is_some_and(|p| p.iter().any(|p| p == "kiln"))
        {
            out.push(data);
        }
    }
    out
}

/// Reads until kiln renews its token (once), failing if it logs in again instead: renewal must keep
/// the token, whether it came from an AppRole login or from a file.
async fn reads_until_renewed(store: &VaultStore, p: &kiln::secrets::SecretPath) {
    poll(
        "a renewal by a read in the last third",
        Duration::from_secs(5),
        || async {
            assert!(matches!(
                store.read(p).await.unwrap(),
                ReadOutcome::Present(_)
            ));
            let stats = store.auth_stats();
            assert_eq!(
                stats.logins, 1,
                "renewed, not replaced by a login: {stats:?}"
            );
            (stats.renewals == 1).then_some(())
        },
    )
    .await
}

/// Waits until the one live kiln token has at most `secs` of its TTL left (and is still alive).
async fn until_ttl_at_most(bao: &Bao, secs: i64) {
    poll(
        &format!("kiln's token within {secs} s of its expiry"),
        Duration::from_secs(30),
        || async {
            let tokens = kiln_tokens(bao).await;
            let ttl = tokens.first()?["ttl"].as_i64()?;
            (tokens.len() == 1 && ttl > 0 && ttl <= secs).then_some(())
        },
    )
    .await
}

/// Waits until OpenBao no longer knows any kiln token (the last one expired).
async fn until_no_kiln_token(bao: &Bao) {
    poll("kiln's token expired", Duration::from_secs(30), || async {
        kiln_tokens(bao).await.is_empty().then_some(())
    })
    .await
}

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

    // In the last third of the TTL (3 s of 9): a read renews the token, it does not replace it. kiln
    // judges the TTL by its own clock from when the login answered, which a loaded machine puts a
    // little after OpenBao's; so read on until kiln renews, and no login may happen meanwhile.
    until_ttl_at_most(&bao, 3).await;
    reads_until_renewed(&store, &p).await;

    // Idle past the whole TTL: the old token is dead, kiln logs in again before asking.
    until_no_kiln_token(&bao).await;
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
    let first = kiln_tokens(&bao).await;
    assert_eq!(first.len(), 1, "{first:?}");
    let (accessor, expire) = (
        first[0]["accessor"].clone(),
        first[0]["expire_time"].as_str().unwrap().to_owned(),
    );
    let keeper = store.keep_token_alive();
    // Idle: the keeper renews on its own before the 9 s TTL runs out (the deadline is that TTL).
    poll(
        "a renewal by the idle keeper",
        Duration::from_secs(9),
        || async { (store.auth_stats().renewals >= 1).then_some(()) },
    )
    .await;
    let (_, now) = bao
        .api_status(
            "POST",
            "auth/token/lookup-accessor",
            Some(json!({ "accessor": accessor })),
        )
        .await;
    let renewed_to = now.as_ref().unwrap()["data"]["expire_time"]
        .as_str()
        .unwrap();
    assert!(
        renewed_to > expire.as_str(),
        "the renewal pushed the same token's expiry out: {expire} → {renewed_to}"
    );
    let stats = store.auth_stats();
    assert_eq!(stats.logins, 1, "{stats:?}");
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
    let ttl_of_token = || async {
        let (code, found) = bao
            .api_status("POST", "auth/token/lookup", Some(json!({ "token": token })))
            .await;
        found.filter(|_| code == 200)?["data"]["ttl"].as_i64()
    };
    poll(
        "the token within 4 s of its expiry",
        Duration::from_secs(30),
        || async { ttl_of_token().await.filter(|t| (1..=4).contains(t)) },
    )
    .await;
    // kiln's clock runs from when the login answered: read on until it renews (as above).
    reads_until_renewed(&store, &p).await;
    // Renewed, the token outlives its first TTL: wait until that first TTL is over by OpenBao's clock.
    let (_, created_info) = bao
        .api_status("POST", "auth/token/lookup", Some(json!({ "token": token })))
        .await;
    let data = &created_info.as_ref().unwrap()["data"];
    let first_end =
        data["creation_time"].as_i64().unwrap() + data["creation_ttl"].as_i64().unwrap();
    poll(
        "the token's first TTL over",
        Duration::from_secs(20),
        || async {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_secs() as i64;
            (now > first_end + 1).then_some(())
        },
    )
    .await;
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
