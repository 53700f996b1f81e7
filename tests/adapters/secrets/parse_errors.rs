//! Issue 24 point 9: a secrets file that does not parse is reported by field and position, never
//! with the value serde would quote (`invalid type: string "…"`), which there is key material that
//! would reach the status, the plan output and the logs.

use kiln::secrets::{FileStore, SecretPath, SecretStore, SecretsError};
use kiln::talos::secrets::SecretsBundle;

/// Key material as it sits in a bundle or a store: base64 of a PEM private key.
const KEY: &str =
    "LS0tLS1CRUdJTiBQUklWQVRFIEtFWS0tLS0tCk1DNENBUUF3QlFZREsyVndCQ0lFSUt0ZXN0a2V5bWF0ZXJpYWw=";

#[tokio::test]
async fn a_store_file_that_does_not_parse_names_position_not_value() {
    let dir = tempfile::tempdir().unwrap();
    let store = FileStore::open(dir.path()).unwrap();
    let p = SecretPath::parse("kubernetes/c/secrets").unwrap();
    std::fs::create_dir_all(dir.path().join("kubernetes/c")).unwrap();
    // A value pasted where the version number belongs.
    let text = format!("{{\n  \"current_version\": \"{KEY}\"\n}}\n");
    std::fs::write(dir.path().join("kubernetes/c/secrets.json"), text).unwrap();
    match store.read(&p).await {
        Err(e @ SecretsError::Corrupt { .. }) => {
            let said = e.to_string();
            assert!(
                !said.contains(&KEY[..16]),
                "the error quotes the value: {said}"
            );
            assert!(
                said.contains("line 2"),
                "the error names no position: {said}"
            );
        }
        other => panic!("a corrupt file must not read as {other:?}"),
    }
}

#[test]
fn a_bundle_that_does_not_parse_names_field_and_position_not_value() {
    // The OS CA given as one string where a {crt, key} map belongs.
    let text = format!("cluster:\n  id: x\n  secret: y\ncerts:\n  os: \"{KEY}\"\n");
    let e = SecretsBundle::from_yaml(&text).unwrap_err();
    let said = e.to_string();
    assert!(
        !said.contains(&KEY[..16]),
        "the error quotes the value: {said}"
    );
    assert!(
        said.contains("line "),
        "the error names no position: {said}"
    );
}
