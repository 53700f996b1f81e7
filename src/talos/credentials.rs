//! Client credentials minted from the bundle's CAs: Talos API client certificates (`os:<role>` in
//! Subject O, ExtKeyUsage exactly ClientAuth, as apid insists), the one-year talosconfig for humans,
//! the admin kubeconfig as Talos's `Kubeconfig` call makes it, and kiln's own short-lived
//! in-memory identities.

use std::net::IpAddr;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use rcgen::{ExtendedKeyUsagePurpose, KeyUsagePurpose};
use serde::Serialize;
use time::OffsetDateTime;

use super::pki::{CertAndKey, CertificateAuthority, LeafSpec, PkiError};
use super::secrets::SecretsBundle;

/// Talos's lifetime for talosconfig and admin-kubeconfig client certs: 8760 h.
pub const HUMAN_CERT_TTL: Duration = Duration::from_secs(8760 * 3600);
/// Earlier name of [`IssuedCert`], kept for callers written against it.
pub type ClientCert = IssuedCert;

/// Talos rotates node API server certs daily.
pub const SERVER_CERT_TTL: Duration = Duration::from_secs(24 * 3600);
/// kiln's own client certs live in memory for an hour (DESIGN §4).
pub const KILN_CERT_TTL: Duration = Duration::from_secs(3600);
/// Talos back-dates the admin kubeconfig cert by 10 s against clock skew.
const KUBECONFIG_BACKDATE: time::Duration = time::Duration::seconds(10);
/// kiln back-dates its own short-lived certs a minute: a node whose clock runs slightly behind
/// the reconciler would otherwise refuse a cert minted "in its future".
const KILN_BACKDATE: time::Duration = time::Duration::seconds(60);

/// The Talos API roles (`pkg/machinery/role`), carried in the client cert's Subject O.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TalosRole {
    Admin,
    Operator,
    Reader,
    EtcdBackup,
}

impl TalosRole {
    pub fn as_str(self) -> &'static str {
        match self {
            TalosRole::Admin => "os:admin",
            TalosRole::Operator => "os:operator",
            TalosRole::Reader => "os:reader",
            TalosRole::EtcdBackup => "os:etcd:backup",
        }
    }
}

fn ttl(d: Duration) -> time::Duration {
    time::Duration::try_from(d).unwrap_or(time::Duration::MAX)
}

/// A minted identity and when it stops working.
#[derive(Debug, Clone)]
pub struct IssuedCert {
    pub cert: CertAndKey,
    pub not_after: OffsetDateTime,
}

/// A Talos API client cert as `NewAdminCertificateAndKey` makes it: key of the OS CA's algorithm,
/// `O=<role>`, no CN, KeyUsage DigitalSignature, ExtKeyUsage exactly ClientAuth.
pub fn mint_talos_client_cert(
    os_ca: &CertificateAuthority,
    role: TalosRole,
    not_before: OffsetDateTime,
    lifetime: Duration,
) -> Result<IssuedCert, PkiError> {
    let not_after = not_before + ttl(lifetime);
    let cert = os_ca.issue(LeafSpec {
        common_name: None,
        ip_sans: &[],
        dns_sans: &[],
        organization: Some(role.as_str()),
        not_before,
        not_after,
        key_usages: &[KeyUsagePurpose::DigitalSignature],
        extended_key_usages: &[ExtendedKeyUsagePurpose::ClientAuth],
    })?;
    Ok(IssuedCert { cert, not_after })
}

/// A node's Talos API server cert as a configured control plane makes it from machine.ca: key of
/// the CA's algorithm, CN = hostname, SANs = the node's addresses + `127.0.0.1` + hostname,
/// KeyUsage DigitalSignature, ExtKeyUsage ServerAuth, 24 h. For the simulator and tests.
pub fn mint_talos_server_cert(
    os_ca: &CertificateAuthority,
    hostname: &str,
    addresses: &[IpAddr],
    not_before: OffsetDateTime,
) -> Result<IssuedCert, PkiError> {
    let not_after = not_before + ttl(SERVER_CERT_TTL);
    let mut ips: Vec<IpAddr> = addresses.to_vec();
    let loopback: IpAddr = std::net::Ipv4Addr::LOCALHOST.into();
    if !ips.contains(&loopback) {
        ips.push(loopback);
    }
    let cert = os_ca.issue(LeafSpec {
        common_name: Some(hostname),
        organization: None,
        ip_sans: &ips,
        dns_sans: &[hostname.to_owned()],
        not_before,
        not_after,
        key_usages: &[KeyUsagePurpose::DigitalSignature],
        extended_key_usages: &[ExtendedKeyUsagePurpose::ServerAuth],
    })?;
    Ok(IssuedCert { cert, not_after })
}

/// kiln's own `os:admin` identity for its Talos calls: one hour, never stored.
pub fn kiln_talos_identity(bundle: &SecretsBundle) -> Result<IssuedCert, PkiError> {
    let now = OffsetDateTime::now_utc();
    mint_talos_client_cert(
        &bundle.os_ca,
        TalosRole::Admin,
        now - KILN_BACKDATE,
        KILN_CERT_TTL + Duration::from_secs(60),
    )
}

/// A Kubernetes client cert from the Kubernetes CA as Talos's `pkg/kubeconfig` makes it:
/// `CN=<user>`, `O=<group>`, KeyUsage DigitalSignature+KeyEncipherment, ExtKeyUsage ClientAuth.
pub fn mint_kubernetes_client_cert(
    k8s_ca: &CertificateAuthority,
    user: &str,
    group: &str,
    not_before: OffsetDateTime,
    lifetime: Duration,
) -> Result<IssuedCert, PkiError> {
    let not_after = not_before + ttl(lifetime);
    let cert = k8s_ca.issue(LeafSpec {
        common_name: Some(user),
        ip_sans: &[],
        dns_sans: &[],
        organization: Some(group),
        not_before,
        not_after,
        key_usages: &[
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ],
        extended_key_usages: &[ExtendedKeyUsagePurpose::ClientAuth],
    })?;
    Ok(IssuedCert { cert, not_after })
}

/// kiln's own `system:masters` identity for its Kubernetes calls: one hour, never stored.
pub fn kiln_kubernetes_identity(bundle: &SecretsBundle) -> Result<IssuedCert, PkiError> {
    let now = OffsetDateTime::now_utc();
    mint_kubernetes_client_cert(
        &bundle.k8s_ca,
        "kiln",
        "system:masters",
        now - KILN_BACKDATE,
        KILN_CERT_TTL + Duration::from_secs(60),
    )
}

/// A rendered credential file and the expiry of the cert inside.
#[derive(Debug, Clone)]
pub struct CredentialFile {
    /// The file's YAML; secret (holds a private key).
    pub yaml: crate::redact::Secret,
    pub client: IssuedCert,
}

#[derive(Serialize)]
struct TalosconfigYaml<'a> {
    context: &'a str,
    contexts: std::collections::BTreeMap<&'a str, TalosContext>,
}

#[derive(Serialize)]
struct TalosContext {
    endpoints: Vec<String>,
    ca: String,
    crt: String,
    key: String,
}

/// The talosconfig for humans: one context named after the cluster, endpoints = the control-plane
/// IPs (never the VIP, which depends on etcd), the OS CA, and a one-year `os:admin` cert.
pub fn talosconfig(
    cluster_name: &str,
    control_plane_ips: &[IpAddr],
    bundle: &SecretsBundle,
    now: OffsetDateTime,
) -> Result<CredentialFile, PkiError> {
    talosconfig_for(cluster_name, control_plane_ips, bundle, now, HUMAN_CERT_TTL)
}

/// [`talosconfig`] with a certificate of `lifetime` (`[talos] credential_lifetime`).
pub fn talosconfig_for(
    cluster_name: &str,
    control_plane_ips: &[IpAddr],
    bundle: &SecretsBundle,
    now: OffsetDateTime,
    lifetime: Duration,
) -> Result<CredentialFile, PkiError> {
    let client = mint_talos_client_cert(&bundle.os_ca, TalosRole::Admin, now, lifetime)?;
    let mut contexts = std::collections::BTreeMap::new();
    contexts.insert(
        cluster_name,
        TalosContext {
            endpoints: control_plane_ips.iter().map(|ip| ip.to_string()).collect(),
            ca: STANDARD.encode(bundle.os_ca.cert_pem()),
            crt: STANDARD.encode(&client.cert.cert_pem),
            key: STANDARD.encode(client.cert.key_pem.expose()),
        },
    );
    let doc = TalosconfigYaml {
        context: cluster_name,
        contexts,
    };
    let yaml = serde_yaml::to_string(&doc).expect("plain strings serialise");
    Ok(CredentialFile {
        yaml: yaml.into(),
        client,
    })
}

#[derive(Serialize)]
#[serde(rename_all = "kebab-case")]
struct KubeconfigYaml<'a> {
    #[serde(rename = "apiVersion")]
    api_version: &'static str,
    kind: &'static str,
    clusters: Vec<Named<'a, KubeCluster>>,
    users: Vec<Named<'a, KubeUser>>,
    contexts: Vec<Named<'a, KubeContext<'a>>>,
    current_context: &'a str,
}

#[derive(Serialize)]
struct Named<'a, T> {
    name: &'a str,
    #[serde(flatten)]
    body: T,
}

#[derive(Serialize)]
struct KubeCluster {
    cluster: KubeClusterBody,
}
#[derive(Serialize)]
#[serde(rename_all = "kebab-case")]
struct KubeClusterBody {
    server: String,
    certificate_authority_data: String,
}
#[derive(Serialize)]
struct KubeUser {
    user: KubeUserBody,
}
#[derive(Serialize)]
#[serde(rename_all = "kebab-case")]
struct KubeUserBody {
    client_certificate_data: String,
    client_key_data: String,
}
#[derive(Serialize)]
struct KubeContext<'a> {
    context: KubeContextBody<'a>,
}
#[derive(Serialize)]
struct KubeContextBody<'a> {
    cluster: &'a str,
    namespace: &'static str,
    user: &'a str,
}

/// The admin kubeconfig Talos's `Kubeconfig` call returns: cluster `<name>`, user and context
/// `admin@<name>`, server = the control-plane endpoint, `CN=admin, O=system:masters`, one year,
/// back-dated 10 s.
pub fn admin_kubeconfig(
    cluster_name: &str,
    endpoint: &str,
    bundle: &SecretsBundle,
    now: OffsetDateTime,
) -> Result<CredentialFile, PkiError> {
    admin_kubeconfig_for(cluster_name, endpoint, bundle, now, HUMAN_CERT_TTL)
}

/// [`admin_kubeconfig`] with a certificate of `lifetime` (`[talos] credential_lifetime`).
pub fn admin_kubeconfig_for(
    cluster_name: &str,
    endpoint: &str,
    bundle: &SecretsBundle,
    now: OffsetDateTime,
    lifetime: Duration,
) -> Result<CredentialFile, PkiError> {
    let client = mint_kubernetes_client_cert(
        &bundle.k8s_ca,
        "admin",
        "system:masters",
        now - KUBECONFIG_BACKDATE,
        lifetime,
    )?;
    let user = format!("admin@{cluster_name}");
    let doc = KubeconfigYaml {
        api_version: "v1",
        kind: "Config",
        clusters: vec![Named {
            name: cluster_name,
            body: KubeCluster {
                cluster: KubeClusterBody {
                    server: endpoint.to_owned(),
                    certificate_authority_data: STANDARD.encode(bundle.k8s_ca.cert_pem()),
                },
            },
        }],
        users: vec![Named {
            name: &user,
            body: KubeUser {
                user: KubeUserBody {
                    client_certificate_data: STANDARD.encode(&client.cert.cert_pem),
                    client_key_data: STANDARD.encode(client.cert.key_pem.expose()),
                },
            },
        }],
        contexts: vec![Named {
            name: &user,
            body: KubeContext {
                context: KubeContextBody {
                    cluster: cluster_name,
                    namespace: "default",
                    user: &user,
                },
            },
        }],
        current_context: &user,
    };
    let yaml = serde_yaml::to_string(&doc).expect("plain strings serialise");
    Ok(CredentialFile {
        yaml: yaml.into(),
        client,
    })
}

/// Trust anchors for rustls from a CA PEM (e.g. the OS CA for Talos, the Kubernetes CA).
pub fn root_store(ca_pem: &str) -> Result<rustls::RootCertStore, PkiError> {
    let mut store = rustls::RootCertStore::empty();
    for der in super::pki::certs_from_pem(ca_pem, "CA certificate")? {
        store.add(der).map_err(|e| PkiError::CertParse {
            what: "CA certificate".into(),
            reason: e.to_string(),
        })?;
    }
    Ok(store)
}

/// A rustls client config for a configured Talos node: trust only the cluster's OS CA, present
/// `identity` (Talos's `ED25519 PRIVATE KEY` label handled), ALPN `h2` as grpc-go requires.
pub fn talos_client_tls(
    os_ca_pem: &str,
    identity: &CertAndKey,
) -> Result<rustls::ClientConfig, PkiError> {
    let roots = root_store(os_ca_pem)?;
    let (chain, key) = identity.to_rustls()?;
    let provider = std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| PkiError::CertParse {
            what: "TLS versions".into(),
            reason: e.to_string(),
        })?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .map_err(|e| PkiError::CertParse {
            what: "client identity".into(),
            reason: e.to_string(),
        })?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}
