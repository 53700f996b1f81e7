//! Each safety rule of DESIGN §7 that `policy` decides, one test per rule; each was seen to fail
//! with its rule broken.

use super::*;
use crate::git::{ClusterFile, ObjectId};

const PRODUCTION: &str = include_str!("../../../examples/clusters/production.yaml");
const STAGING: &str = include_str!("../../../examples/clusters/staging.yaml");
const GRACE: Duration = Duration::from_secs(600);

fn rules(allow_empty: bool) -> Rules {
    Rules {
        allow_empty,
        decommission_grace: GRACE,
    }
}

fn t0() -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp(1_800_000_000).unwrap()
}

fn name(s: &str) -> ClusterName {
    s.parse().unwrap()
}

fn oid(byte: u8) -> ObjectId {
    ObjectId::from_bytes_or_panic(&[byte; 20])
}

fn snapshot(files: &[(&str, Result<&str, &str>)]) -> Snapshot {
    Snapshot {
        rev: oid(1),
        files: files
            .iter()
            .enumerate()
            .map(|(i, (name, text))| ClusterFile {
                path: format!("clusters/{name}.yaml"),
                name: (*name).to_owned(),
                blob: oid(10 + i as u8),
                text: text.map(str::to_owned).map_err(str::to_owned),
            })
            .collect(),
        templates: BTreeMap::new(),
        templates_tree: None,
        source_commit: oid(2),
    }
}

fn applied(n: &str, text: &str) -> ClusterRecord {
    ClusterRecord {
        spec_text: text.to_owned(),
        path: format!("clusters/{n}.yaml"),
        applied_revision: Some("r".into()),
        ..Default::default()
    }
}

fn both_applied() -> Records {
    Records {
        clusters: BTreeMap::from([
            (name("staging"), applied("staging", STAGING)),
            (name("production"), applied("production", PRODUCTION)),
        ]),
        published_key: None,
    }
}

fn names(out: &[(Cluster, String)]) -> Vec<&str> {
    out.iter().map(|(c, _)| c.name.as_str()).collect()
}

#[test]
fn invalid_and_undecodable_files_are_unknown_not_absent() {
    let s = snapshot(&[
        ("production", Ok(PRODUCTION)),
        ("staging", Ok("spec: [unclosed")),
        ("broken", Err("not UTF-8")),
    ]);
    let intent = Intent::read(&s);
    assert_eq!(
        intent.valid.keys().map(|n| n.as_str()).collect::<Vec<_>>(),
        ["production"]
    );
    assert!(intent.invalid.contains_key("staging"));
    assert!(intent.invalid.contains_key("broken"));
    assert!(intent.present("staging") && intent.present("broken"));
    assert!(!intent.present("gone"));
    let prod = &intent.valid["production"];
    assert_eq!(prod.revision, oid(10).to_string());
    assert!(
        intent.invalid["staging"]
            .1
            .contains("clusters/staging.yaml")
    );
}

#[test]
fn a_valid_file_beside_an_invalid_entry_of_the_same_name_is_unknown() {
    let mut s = snapshot(&[("production", Ok(PRODUCTION)), ("staging", Ok(STAGING))]);
    s.files.push(ClusterFile {
        path: "clusters/production.yml".into(),
        name: "production".into(),
        blob: oid(30),
        text: Err("ends in .yml".into()),
    });
    let intent = Intent::read(&s);
    assert_eq!(
        intent.valid.keys().map(|n| n.as_str()).collect::<Vec<_>>(),
        ["staging"]
    );
    let (path, message) = &intent.invalid["production"];
    assert_eq!(path, "clusters/production.yml");
    assert!(
        message.contains("clusters/production.yml: ends in .yml"),
        "{message}"
    );
}

#[test]
fn an_invalid_file_is_never_missing_and_cancels_a_running_grace() {
    let mut records = both_applied();
    records.clusters.get_mut("staging").unwrap().missing_since = Some(t0());
    let intent = Intent::read(&snapshot(&[
        ("production", Ok(PRODUCTION)),
        ("staging", Ok("{{")),
    ]));
    assert!(!record_intent(&mut records, &intent));
    assert_eq!(records.clusters["staging"].missing_since, None);
    let later = t0() + GRACE * 10;
    let missing = missing_clusters(&mut records, &intent, true, rules(false), later);
    assert!(missing.is_empty(), "{missing:?}");
}

#[test]
fn a_new_valid_file_is_recorded_before_anything_acts() {
    let mut records = Records::default();
    let intent = Intent::read(&snapshot(&[("production", Ok(PRODUCTION))]));
    assert!(record_intent(&mut records, &intent));
    let r = &records.clusters["production"];
    assert_eq!(r.spec_text, PRODUCTION);
    assert!(r.applied_revision.is_none());
    assert!(!record_intent(&mut records, &intent), "already known");
}

#[test]
fn a_missing_file_waits_its_grace_from_when_it_was_first_missed() {
    let mut records = both_applied();
    let intent = Intent::read(&snapshot(&[("production", Ok(PRODUCTION))]));
    let missing = missing_clusters(&mut records, &intent, true, rules(false), t0());
    assert_eq!(
        missing[&name("staging")],
        Missing::Grace {
            until: t0() + GRACE
        }
    );
    assert_eq!(records.clusters["staging"].missing_since, Some(t0()));

    // Later cycles keep the first moment: the grace does not restart.
    let almost = t0() + GRACE - Duration::from_secs(1);
    let missing = missing_clusters(&mut records, &intent, true, rules(false), almost);
    assert_eq!(
        missing[&name("staging")],
        Missing::Grace {
            until: t0() + GRACE
        }
    );
    let over = t0() + GRACE;
    let missing = missing_clusters(&mut records, &intent, true, rules(false), over);
    assert_eq!(missing[&name("staging")], Missing::Decommission);

    // The file comes back: the grace is cancelled and starts afresh next time.
    let back = Intent::read(&snapshot(&[
        ("production", Ok(PRODUCTION)),
        ("staging", Ok(STAGING)),
    ]));
    record_intent(&mut records, &back);
    assert_eq!(records.clusters["staging"].missing_since, None);
}

#[test]
fn nothing_is_missing_when_git_could_not_be_read() {
    let mut records = both_applied();
    let intent = Intent::default();
    let later = t0() + GRACE * 10;
    let missing = missing_clusters(&mut records, &intent, false, rules(true), later);
    assert!(missing.is_empty());
    assert!(records.clusters.values().all(|r| r.missing_since.is_none()));
}

#[test]
fn an_emptied_folder_holds_every_cluster_unless_allow_empty() {
    let later = t0() + GRACE * 10;
    for intent in [
        Intent::default(),
        // Only invalid files: still no valid one.
        Intent::read(&snapshot(&[("staging", Ok("{{"))])),
    ] {
        let mut records = both_applied();
        for r in records.clusters.values_mut() {
            r.missing_since = Some(t0());
        }
        let missing = missing_clusters(&mut records, &intent, true, rules(false), later);
        assert_eq!(missing.get(&name("production")), Some(&Missing::HeldEmpty));
        assert!(missing.values().all(|m| *m == Missing::HeldEmpty));
    }
    let mut records = both_applied();
    for r in records.clusters.values_mut() {
        r.missing_since = Some(t0());
    }
    let missing = missing_clusters(&mut records, &Intent::default(), true, rules(true), later);
    assert!(missing.values().all(|m| *m == Missing::Decommission));
    assert_eq!(missing.len(), 2);
}

#[test]
fn deletion_protection_holds_past_the_grace() {
    let later = t0() + GRACE * 10;
    assert_eq!(
        missing_state(true, t0(), true, rules(false), later),
        Missing::Protected
    );
    assert_eq!(
        missing_state(false, t0(), true, rules(false), later),
        Missing::Decommission
    );
    // The empty-folder hold wins over protection: both hold, the emptied folder is the cause.
    assert_eq!(
        missing_state(true, t0(), false, rules(false), later),
        Missing::HeldEmpty
    );
    let v = held_verdict(Missing::Protected, "clusters/staging.yaml", true, later);
    assert_eq!(v.phase, Phase::Blocked);
    assert!(v.settled);
    assert!(v.message.contains("deletionProtection"), "{}", v.message);
}

#[test]
fn output_keeps_unknown_and_held_clusters_and_drops_the_decommissioned() {
    let records = both_applied();
    // staging's file turned invalid: its last applied spec is still rendered.
    let s = snapshot(&[("production", Ok(PRODUCTION)), ("staging", Ok("{{"))]);
    let out = output_clusters(&Intent::read(&s), &records, &BTreeSet::new());
    assert_eq!(names(&out), ["production", "staging"]);

    // staging's file is gone: kept while held (grace, protection), dropped once decommissioned.
    let intent = Intent::read(&snapshot(&[("production", Ok(PRODUCTION))]));
    for state in [
        Missing::HeldEmpty,
        Missing::Protected,
        Missing::Grace { until: t0() },
    ] {
        let missing = BTreeMap::from([(name("staging"), state)]);
        let out = output_clusters(&intent, &records, &held(&missing));
        assert_eq!(names(&out), ["production", "staging"], "{state:?}");
    }
    let missing = BTreeMap::from([(name("staging"), Missing::Decommission)]);
    let out = output_clusters(&intent, &records, &held(&missing));
    assert_eq!(names(&out), ["production"]);
    assert_eq!(
        changed_clusters(&intent, &records, &missing),
        ["production", "staging"]
    );
}

#[test]
fn a_never_applied_cluster_with_an_invalid_file_renders_nothing() {
    let records = Records {
        clusters: BTreeMap::from([(
            name("staging"),
            ClusterRecord {
                spec_text: STAGING.into(),
                path: "clusters/staging.yaml".into(),
                ..Default::default()
            },
        )]),
        published_key: None,
    };
    let s = snapshot(&[("staging", Ok("{{"))]);
    assert!(output_clusters(&Intent::read(&s), &records, &BTreeSet::new()).is_empty());
}

#[test]
fn the_publish_key_follows_every_input_of_the_render() {
    let records = both_applied();
    let intent = Intent::read(&snapshot(&[
        ("production", Ok(PRODUCTION)),
        ("staging", Ok(STAGING)),
    ]));
    let out = output_clusters(&intent, &records, &BTreeSet::new());
    let settings = RenderSettings::default();
    let none = BTreeMap::new();
    let key = publish_key(&settings, &out, &none);
    assert_eq!(key, publish_key(&settings, &out, &none));
    assert_ne!(key, publish_key(&settings, &out[..1], &none));
    let templates = BTreeMap::from([("templates/x".to_owned(), "y".to_owned())]);
    assert_ne!(key, publish_key(&settings, &out, &templates));
    let other = RenderSettings {
        target_revision: "other".into(),
        ..RenderSettings::default()
    };
    assert_ne!(key, publish_key(&other, &out, &none));
}

#[test]
fn destruction_waits_for_the_published_removal() {
    // Not published (push refused, render failed): nothing is destroyed.
    assert_eq!(
        missing_turn(Missing::Decommission, false, false),
        MissingTurn::Hold
    );
    assert_eq!(
        missing_turn(Missing::Decommission, true, false),
        MissingTurn::Decommission
    );
    // The tip published has the file again: cancelled.
    assert_eq!(
        missing_turn(Missing::Decommission, true, true),
        MissingTurn::Returned
    );
    for held in [
        Missing::HeldEmpty,
        Missing::Protected,
        Missing::Grace { until: t0() },
    ] {
        assert_eq!(missing_turn(held, true, false), MissingTurn::Hold);
    }
    let waiting = held_verdict(Missing::Decommission, "p", false, t0());
    assert_eq!(waiting.phase, Phase::Deleting);
    assert!(waiting.settled, "a failed publish waits for the next cycle");
}

#[test]
fn a_grace_wakes_the_loop_when_it_ends() {
    let until = t0() + GRACE;
    let v = held_verdict(Missing::Grace { until }, "p", true, t0());
    assert_eq!(v.wake_in, Some(GRACE));
    assert!(!v.settled);
    let v = held_verdict(Missing::Grace { until }, "p", true, until + GRACE);
    assert_eq!(v.wake_in, Some(Duration::from_secs(1)));
}

/// The spec last applied is the file's own cluster when the text is the recorded one, the recorded
/// text's otherwise (a renumbering is judged against what was applied), and none before a success.
#[test]
fn the_previous_spec_is_the_recorded_text_whichever_way_it_is_found() {
    let snap = snapshot(&[("production", Ok(PRODUCTION))]);
    let intent = Intent::read(&snap);
    let now = &intent.valid[&name("production")];
    assert_eq!(
        now.revision,
        snap.intent_revision("production").unwrap().to_string()
    );
    let same = applied("production", PRODUCTION);
    let from_file = previous_cluster(&same, now).unwrap();
    assert_eq!(from_file, recorded_cluster(&same).unwrap());

    let older = PRODUCTION.replace("memoryGiB: 16", "memoryGiB: 12");
    assert_ne!(older, PRODUCTION, "the example has a 16 GiB size to change");
    let changed = applied("production", &older);
    let previous = previous_cluster(&changed, now).unwrap();
    assert_eq!(previous, recorded_cluster(&changed).unwrap());
    assert_ne!(previous, now.cluster, "the recorded text, not the file's");

    let never = ClusterRecord {
        applied_revision: None,
        ..same
    };
    assert!(previous_cluster(&never, now).is_none());
}
