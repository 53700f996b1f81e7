//! A standalone management cluster's API (`kiln sim kubernetes`): the same simulated API server,
//! with a CA of its own, for what kiln keeps in the Argo CD cluster — the `[ha]` Lease. Leases are
//! stored like any object (`store`): a `PUT` whose `resourceVersion` is not the stored one is 409
//! `Conflict`, a `POST` of a name that exists is 409 `AlreadyExists`, as the API server's generic
//! registry answers (`staging/src/k8s.io/apiserver/pkg/registry/generic/registry/store.go`: `Update`
//! and `Create`, with `apimachinery/pkg/api/errors`' `NewConflict` / `NewAlreadyExists`).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use base64::Engine as _;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose, SanType,
};

use super::{KubeSimError, KubeSimServer, KubeSimState, KubeSimTls};

/// The running API and a kubeconfig (cluster-admin by client certificate) the `kube` client reads.
pub struct Management {
    pub server: KubeSimServer,
    pub kubeconfig: String,
}

fn tls_err(e: impl std::fmt::Display) -> KubeSimError {
    KubeSimError::Tls(e.to_string())
}

fn leaf(
    issuer: &CertifiedIssuer<'static, KeyPair>,
    cn: &str,
    sans: Vec<SanType>,
    eku: ExtendedKeyUsagePurpose,
) -> Result<(String, String), KubeSimError> {
    let mut p = CertificateParams::new(Vec::<String>::new()).map_err(tls_err)?;
    p.distinguished_name = DistinguishedName::new();
    p.distinguished_name.push(DnType::CommonName, cn);
    if eku == ExtendedKeyUsagePurpose::ClientAuth {
        p.distinguished_name
            .push(DnType::OrganizationName, "system:masters");
    }
    p.subject_alt_names = sans;
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    p.extended_key_usages = vec![eku];
    let key = KeyPair::generate().map_err(tls_err)?;
    let cert = p.signed_by(&key, issuer).map_err(tls_err)?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// Serves an empty cluster (plus `namespaces`) on `listen` (port 0: any) over TLS with client
/// certificates required, and returns its kubeconfig.
pub async fn start(listen: SocketAddr, namespaces: &[&str]) -> Result<Management, KubeSimError> {
    let mut ca = CertificateParams::new(Vec::<String>::new()).map_err(tls_err)?;
    ca.distinguished_name = DistinguishedName::new();
    ca.distinguished_name
        .push(DnType::CommonName, "kiln-sim-management-ca");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca =
        CertifiedIssuer::self_signed(ca, KeyPair::generate().map_err(tls_err)?).map_err(tls_err)?;
    let (server_cert, server_key) = leaf(
        &ca,
        "kube-apiserver",
        vec![SanType::IpAddress(listen.ip())],
        ExtendedKeyUsagePurpose::ServerAuth,
    )?;
    let (client_cert, client_key) = leaf(&ca, "kiln", vec![], ExtendedKeyUsagePurpose::ClientAuth)?;
    let mut state = KubeSimState::default();
    for ns in namespaces {
        state.create(serde_json::json!({
            "apiVersion": "v1", "kind": "Namespace", "metadata": { "name": ns },
            "spec": { "finalizers": ["kubernetes"] }, "status": { "phase": "Active" },
        }))?;
    }
    let tls = KubeSimTls {
        server_cert_pem: server_cert,
        server_key_pem: server_key,
        client_ca_pem: ca.pem(),
    };
    let server = KubeSimServer::start(listen, &tls, Arc::new(Mutex::new(state))).await?;
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s.as_bytes());
    let kubeconfig = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: management\n  cluster:\n    server: https://{addr}\n    certificate-authority-data: {ca}\nusers:\n- name: kiln\n  user:\n    client-certificate-data: {crt}\n    client-key-data: {key}\ncontexts:\n- name: management\n  context:\n    cluster: management\n    user: kiln\ncurrent-context: management\n",
        addr = server.addr,
        ca = b64(&ca.pem()),
        crt = b64(&client_cert),
        key = b64(&client_key),
    );
    Ok(Management { server, kubeconfig })
}
