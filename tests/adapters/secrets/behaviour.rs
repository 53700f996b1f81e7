//! What every `SecretStore` must do, written once over the trait and run against OpenBao and the
//! file store alike. Each case works below its own folder so cases can share a store.

use kiln::config::OnDecommission;
use kiln::secrets::{
    CreateOutcome, CustomMetadata, Gone, MetadataPatch, ReadOutcome, SecretPath, SecretPaths,
    SecretStore, SecretsError, bundle_keys, bundle_record, decommission, meta_keys, secret_data,
};
use kiln::spec::ClusterName;

fn path(p: &str) -> SecretPath {
    SecretPath::parse(p).unwrap()
}

fn cluster(base: &str, name: &str) -> SecretPaths {
    SecretPaths::for_cluster(
        &kiln::secrets::Prefix::parse(base).unwrap(),
        &name.parse::<ClusterName>().unwrap(),
    )
}

fn present(outcome: &ReadOutcome) -> &kiln::secrets::Stored {
    match outcome {
        ReadOutcome::Present(s) => s,
        other => panic!("expected a readable value, got {other:?}"),
    }
}

fn exposed(s: &kiln::secrets::Stored, key: &str) -> String {
    s.data
        .get(key)
        .unwrap_or_else(|| panic!("no key {key}"))
        .expose()
        .to_owned()
}

pub async fn run_all(store: &dyn SecretStore, second: &dyn SecretStore, base: &str) {
    store.check().await.unwrap();
    write_read_overwrite_delete(store, &format!("{base}/crud")).await;
    soft_deleted_bundle_is_reported_not_recreated(store, &format!("{base}/softdel")).await;
    concurrent_creators_one_wins(store, second, &format!("{base}/race")).await;
    custom_metadata_merges(store, &format!("{base}/meta")).await;
    list_a_cluster(store, &format!("{base}/list")).await;
    decommission_retain_then_destroy(store, &format!("{base}/decom")).await;
}

pub async fn write_read_overwrite_delete(store: &dyn SecretStore, base: &str) {
    let p = cluster(base, "c1").kubeconfig;
    assert_eq!(store.read(&p).await.unwrap(), ReadOutcome::Absent);

    let v1 = secret_data([
        ("kubeconfig", "kc-one"),
        ("server", "https://10.0.0.10:6443"),
    ]);
    let meta =
        CustomMetadata::from([(meta_keys::EXPIRES_AT.into(), "2027-01-01T00:00:00Z".into())]);
    let created = store.create(&p, &v1, &meta).await.unwrap();
    assert_eq!(created, CreateOutcome::Created { version: 1 });

    let read = store.read(&p).await.unwrap();
    let s = present(&read);
    assert_eq!(s.version, 1);
    assert_eq!(exposed(s, "kubeconfig"), "kc-one");
    assert_eq!(exposed(s, "server"), "https://10.0.0.10:6443");
    assert_eq!(s.custom_metadata, meta);

    // A second create never replaces the value.
    let again = store
        .create(
            &p,
            &secret_data([("kubeconfig", "kc-other")]),
            &CustomMetadata::new(),
        )
        .await
        .unwrap();
    match again {
        CreateOutcome::AlreadyExists(ReadOutcome::Present(s)) => {
            assert_eq!(exposed(&s, "kubeconfig"), "kc-one")
        }
        other => panic!("second create must report the existing value, got {other:?}"),
    }

    let v2 = secret_data([("kubeconfig", "kc-two")]);
    assert_eq!(store.overwrite(&p, 1, &v2).await.unwrap(), 2);
    // A writer still holding version 1 loses.
    match store
        .overwrite(&p, 1, &secret_data([("kubeconfig", "stale")]))
        .await
    {
        Err(SecretsError::CasConflict {
            expected: 1,
            current: Some(2),
            ..
        }) => {}
        other => panic!("stale overwrite must be a CAS conflict, got {other:?}"),
    }
    // Overwriting a path that was never written is a conflict too (current: none).
    match store.overwrite(&cluster(base, "c1").talos, 1, &v2).await {
        Err(SecretsError::CasConflict { current: None, .. }) => {}
        other => panic!("overwrite of an absent path must conflict, got {other:?}"),
    }
    let read = store.read(&p).await.unwrap();
    let s = present(&read);
    assert_eq!((s.version, exposed(s, "kubeconfig")), (2, "kc-two".into()));
    assert!(
        !s.data.contains_key("server"),
        "a version replaces all keys"
    );
    assert_eq!(s.custom_metadata, meta, "metadata survives a new version");

    store.delete(&p).await.unwrap();
    match store.read(&p).await.unwrap() {
        ReadOutcome::DeletedOrDestroyed {
            current_version: 2,
            state: Gone::SoftDeleted { deleted_at },
            custom_metadata,
        } => {
            assert!(!deleted_at.is_empty());
            assert_eq!(custom_metadata, meta);
        }
        other => panic!("soft-deleted must be reported as such, got {other:?}"),
    }

    store.destroy(&p).await.unwrap();
    assert_eq!(store.read(&p).await.unwrap(), ReadOutcome::Absent);
    store.destroy(&p).await.unwrap(); // idempotent
    assert_eq!(
        store.create(&p, &v1, &CustomMetadata::new()).await.unwrap(),
        CreateOutcome::Created { version: 1 }
    );
}

pub async fn soft_deleted_bundle_is_reported_not_recreated(store: &dyn SecretStore, base: &str) {
    let p = cluster(base, "c1").secrets;
    let (data, meta) = bundle_record("uid-1", secret_data([(bundle_keys::BUNDLE, "bundle: one")]));
    assert_eq!(
        store.create(&p, &data, &meta).await.unwrap(),
        CreateOutcome::Created { version: 1 }
    );
    let read = store.read(&p).await.unwrap();
    let s = present(&read);
    assert_eq!(exposed(s, bundle_keys::CLUSTER_UID), "uid-1");
    assert_eq!(
        s.custom_metadata
            .get(meta_keys::CLUSTER_UID)
            .map(String::as_str),
        Some("uid-1")
    );

    store.delete(&p).await.unwrap();
    let (fresh, fresh_meta) =
        bundle_record("uid-2", secret_data([(bundle_keys::BUNDLE, "bundle: two")]));
    match store.create(&p, &fresh, &fresh_meta).await.unwrap() {
        CreateOutcome::AlreadyExists(ReadOutcome::DeletedOrDestroyed {
            state: Gone::SoftDeleted { .. },
            custom_metadata,
            ..
        }) => assert_eq!(
            custom_metadata
                .get(meta_keys::CLUSTER_UID)
                .map(String::as_str),
            Some("uid-1")
        ),
        other => panic!("a soft-deleted bundle must block a new one, got {other:?}"),
    }
    assert!(matches!(
        store.read(&p).await.unwrap(),
        ReadOutcome::DeletedOrDestroyed { .. }
    ));
}

pub async fn concurrent_creators_one_wins(
    store: &dyn SecretStore,
    second: &dyn SecretStore,
    base: &str,
) {
    let p = cluster(base, "race").secrets;
    let bundles: Vec<_> = (0..8)
        .map(|i| {
            bundle_record(
                &format!("uid-{i}"),
                secret_data([(bundle_keys::BUNDLE, format!("bundle {i}"))]),
            )
        })
        .collect();
    // Half the writers go through a second client / a second file-store handle (another process).
    let outcomes = futures::future::join_all(bundles.iter().enumerate().map(|(i, (d, m))| {
        let s = if i % 2 == 0 { store } else { second };
        s.create(&p, d, m)
    }))
    .await;
    let mut winners = Vec::new();
    let mut losers = Vec::new();
    for (i, o) in outcomes.into_iter().enumerate() {
        match o.unwrap() {
            CreateOutcome::Created { version } => {
                assert_eq!(version, 1);
                winners.push(i);
            }
            CreateOutcome::AlreadyExists(read) => losers.push(read),
        }
    }
    assert_eq!(winners.len(), 1, "exactly one bundle wins, got {winners:?}");
    let w = winners[0];
    let uid = format!("uid-{w}");
    for l in &losers {
        let s = present(l);
        assert_eq!(
            exposed(s, bundle_keys::CLUSTER_UID),
            uid,
            "each loser reads the winner's bundle"
        );
        assert_eq!(exposed(s, bundle_keys::BUNDLE), format!("bundle {w}"));
    }
    let read = store.read(&p).await.unwrap();
    let s = present(&read);
    assert_eq!(
        (s.version, exposed(s, bundle_keys::CLUSTER_UID)),
        (1, uid.clone())
    );
    assert_eq!(s.custom_metadata.get(meta_keys::CLUSTER_UID), Some(&uid));
}

pub async fn custom_metadata_merges(store: &dyn SecretStore, base: &str) {
    let p = cluster(base, "m").secrets;
    let patch =
        |k: &str, v: Option<&str>| MetadataPatch::from([(k.to_owned(), v.map(str::to_owned))]);
    match store
        .patch_metadata(&p, &patch(meta_keys::BOOTSTRAPPED_AT, Some("x")))
        .await
    {
        Err(SecretsError::NotFound { .. }) => {}
        other => panic!("metadata of an absent path is NotFound, got {other:?}"),
    }
    let (d, m) = bundle_record("u", secret_data([(bundle_keys::BUNDLE, "b")]));
    store.create(&p, &d, &m).await.unwrap();
    store
        .patch_metadata(
            &p,
            &patch(meta_keys::BOOTSTRAPPED_AT, Some("2026-11-25T01:00:00Z")),
        )
        .await
        .unwrap();
    store
        .patch_metadata(&p, &patch("note", Some("n")))
        .await
        .unwrap();
    let read = store.read(&p).await.unwrap();
    let got = &present(&read).custom_metadata;
    assert_eq!(
        got.get(meta_keys::CLUSTER_UID).map(String::as_str),
        Some("u")
    );
    assert_eq!(
        got.get(meta_keys::BOOTSTRAPPED_AT).map(String::as_str),
        Some("2026-11-25T01:00:00Z")
    );
    assert_eq!(got.get("note").map(String::as_str), Some("n"));
    store
        .patch_metadata(&p, &patch("note", None))
        .await
        .unwrap();
    let read = store.read(&p).await.unwrap();
    let got = &present(&read).custom_metadata;
    assert!(!got.contains_key("note"), "None removes a key: {got:?}");
    assert_eq!(got.len(), 2);
    assert_eq!(
        present(&read).version,
        1,
        "metadata writes make no new version"
    );
}

pub async fn list_a_cluster(store: &dyn SecretStore, base: &str) {
    let c = cluster(base, "l");
    let other = cluster(base, "l2");
    for p in c.all().into_iter().chain([&other.talos]) {
        store
            .create(p, &secret_data([("k", "v")]), &CustomMetadata::new())
            .await
            .unwrap();
    }
    let nested = c.dir.join("extra/deep").unwrap();
    store
        .create(&nested, &secret_data([("k", "v")]), &CustomMetadata::new())
        .await
        .unwrap();
    let listed = store.list(&c.dir).await.unwrap();
    let mut want = vec![
        c.kubeconfig.clone(),
        c.secrets.clone(),
        c.talos.clone(),
        nested,
    ];
    want.sort();
    assert_eq!(listed, want);
    assert_eq!(
        store.list(&path(&format!("{base}/none"))).await.unwrap(),
        vec![]
    );
}

pub async fn decommission_retain_then_destroy(store: &dyn SecretStore, base: &str) {
    let c = cluster(base, "d");
    for p in c.all() {
        store
            .create(p, &secret_data([("k", "v")]), &CustomMetadata::new())
            .await
            .unwrap();
    }
    store.delete(&c.talos).await.unwrap(); // a soft-deleted path is marked too
    // An operator's own secrets beside kiln's: a decommission never touches them (issue 24 point 5).
    let theirs = [
        c.dir.join("argocd-admin").unwrap(),
        c.dir.join("apps/db").unwrap(),
    ];
    for p in &theirs {
        store
            .create(p, &secret_data([("pw", "v")]), &CustomMetadata::new())
            .await
            .unwrap();
    }
    let t1 = time::macros::datetime!(2026-11-25 01:00 UTC);
    let report = decommission(store, &c, OnDecommission::Retain, t1)
        .await
        .unwrap();
    assert_eq!(report.marked.len(), 3, "{report:?}");
    for p in &theirs {
        assert_eq!(
            store.read(p).await.unwrap().decommissioned_at(),
            None,
            "{p} is not kiln's: retain does not mark it"
        );
    }
    for p in c.all() {
        let read = store.read(p).await.unwrap();
        assert_eq!(
            read.decommissioned_at(),
            Some("2026-11-25T01:00:00Z"),
            "{p}"
        );
    }
    assert!(
        present(&store.read(&c.secrets).await.unwrap())
            .data
            .contains_key("k"),
        "retain keeps values"
    );
    let t2 = time::macros::datetime!(2026-11-26 01:00 UTC);
    let again = decommission(store, &c, OnDecommission::Retain, t2)
        .await
        .unwrap();
    assert_eq!((again.marked.len(), again.already_marked.len()), (0, 3));
    assert_eq!(
        store.read(&c.secrets).await.unwrap().decommissioned_at(),
        Some("2026-11-25T01:00:00Z"),
        "the first mark is kept"
    );

    let report = decommission(store, &c, OnDecommission::Destroy, t2)
        .await
        .unwrap();
    assert_eq!(report.destroyed.len(), 3);
    for p in c.all() {
        assert_eq!(store.read(p).await.unwrap(), ReadOutcome::Absent, "{p}");
    }
    assert_eq!(
        store.list(&c.dir).await.unwrap(),
        theirs.iter().rev().cloned().collect::<Vec<_>>(),
        "destroy removes kiln's three paths only; the operator's secrets stay"
    );
    for p in &theirs {
        assert!(
            present(&store.read(p).await.unwrap())
                .data
                .contains_key("pw"),
            "{p}"
        );
    }
}
