//! A real TLS 1.3 handshake over TCP: a server holding a Talos-style node cert from the OS CA and
//! requiring client certs from it accepts the talosconfig's cert (read back from the file, as an
//! operator's talosctl would) and kiln's 1 h cert, and refuses a cert from another CA.

use std::net::IpAddr;
use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use kiln::talos::credentials::{self, TalosRole};
use kiln::talos::{CertAndKey, CertificateAuthority, KeyAlgorithm, PrivateKeyPem, SecretsBundle};
use rustls_pki_types::ServerName;
use time::OffsetDateTime;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn serve_once(
    bundle: &SecretsBundle,
) -> (std::net::SocketAddr, tokio::task::JoinHandle<bool>) {
    let server = credentials::mint_talos_server_cert(
        &bundle.os_ca,
        "cp-1",
        &["127.0.0.1".parse().unwrap()],
        OffsetDateTime::now_utc(),
    )
    .unwrap();
    let (chain, key) = server.cert.to_rustls().unwrap();
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(credentials::root_store(bundle.os_ca.cert_pem()).unwrap()),
        provider.clone(),
    )
    .build()
    .unwrap();
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .unwrap();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        match acceptor.accept(tcp).await {
            Ok(mut tls) => {
                let mut b = [0u8; 4];
                tls.read_exact(&mut b).await.is_ok() && tls.write_all(b"pong").await.is_ok()
            }
            Err(_) => false,
        }
    });
    (addr, task)
}

async fn ping(
    addr: std::net::SocketAddr,
    ca_pem: &str,
    identity: &CertAndKey,
) -> Result<(), String> {
    let config = credentials::talos_client_tls(ca_pem, identity).map_err(|e| e.to_string())?;
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = ServerName::IpAddress("127.0.0.1".parse::<IpAddr>().unwrap().into());
    let mut tls = connector
        .connect(name, tcp)
        .await
        .map_err(|e| e.to_string())?;
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    tls.write_all(b"ping").await.map_err(|e| e.to_string())?;
    let mut b = [0u8; 4];
    tls.read_exact(&mut b).await.map_err(|e| e.to_string())?;
    (&b == b"pong").then_some(()).ok_or("no pong".into())
}

fn from_talosconfig(yaml: &str, cluster: &str) -> (String, CertAndKey) {
    let v: serde_yaml::Value = serde_yaml::from_str(yaml).unwrap();
    let ctx = &v["contexts"][cluster];
    let field =
        |k: &str| String::from_utf8(STANDARD.decode(ctx[k].as_str().unwrap()).unwrap()).unwrap();
    (
        field("ca"),
        CertAndKey {
            cert_pem: field("crt"),
            key_pem: PrivateKeyPem::new(field("key")),
        },
    )
}

#[tokio::test]
async fn talosconfig_cert_passes_mtls_and_a_foreign_one_is_refused() {
    let bundle = SecretsBundle::generate().unwrap();
    let tc = credentials::talosconfig(
        "production",
        &["127.0.0.1".parse().unwrap()],
        &bundle,
        OffsetDateTime::now_utc(),
    )
    .unwrap();
    let (ca, identity) = from_talosconfig(tc.yaml.expose(), "production");

    let (addr, server) = serve_once(&bundle).await;
    ping(addr, &ca, &identity)
        .await
        .expect("talosconfig cert accepted");
    assert!(server.await.unwrap());

    let kiln_id = credentials::kiln_talos_identity(&bundle).unwrap();
    let (addr, server) = serve_once(&bundle).await;
    ping(addr, &ca, &kiln_id.cert)
        .await
        .expect("kiln's 1 h cert accepted");
    assert!(server.await.unwrap());

    let stranger = CertificateAuthority::generate(
        Some("talos"),
        KeyAlgorithm::Ed25519,
        OffsetDateTime::now_utc(),
    )
    .unwrap();
    let foreign = credentials::mint_talos_client_cert(
        &stranger,
        TalosRole::Admin,
        OffsetDateTime::now_utc(),
        credentials::KILN_CERT_TTL,
    )
    .unwrap();
    let (addr, server) = serve_once(&bundle).await;
    assert!(
        ping(addr, &ca, &foreign.cert).await.is_err(),
        "foreign cert refused"
    );
    assert!(!server.await.unwrap());

    // And the client refuses a server whose cert is not from the cluster's OS CA.
    let other = SecretsBundle::generate().unwrap();
    let (addr, server) = serve_once(&other).await;
    assert!(
        ping(addr, &ca, &identity).await.is_err(),
        "foreign server refused"
    );
    let _ = server.await;
}
