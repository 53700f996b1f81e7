//! No secret value, AppRole credential or token in a TRACE capture of a full Vault cycle.

use std::io::Write;
use std::sync::{Arc, Mutex};

use kiln::secrets::{CustomMetadata, SecretStore, VaultAuth, VaultStore, meta_keys, secret_data};

use super::bao::Bao;
use super::vault_store::{approle, path, settings};

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
