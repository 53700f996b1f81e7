//! The simulated node's TLS: a self-signed certificate in maintenance (Talos makes a throwaway CA at
//! boot), then a server certificate from the config's OS CA with mTLS that requires a client certificate
//! from that CA whose ExtKeyUsage is exactly ClientAuth (apid's `verifyExtKeyUsage`). Roles come from the
//! client certificate's Subject O, as in Talos.

use std::io::Write;
use std::net::IpAddr;
use std::sync::Arc;

use rcgen::{
    CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{
    DigitallySignedStruct, DistinguishedName as TlsDn, RootCertStore, ServerConfig, SignatureScheme,
};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, UnixTime};
use time::OffsetDateTime;

use super::config::NodeConfig;
use crate::talos::grpc::tls::{ALPN_H2, certs_from_pem, provider};

fn server_config_builder()
-> Result<rustls::ConfigBuilder<ServerConfig, rustls::WantsVerifier>, String> {
    ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())
}

/// Maintenance mode: a self-signed Ed25519 certificate for the node's address, no client certificate asked.
pub fn maintenance_server_config(ip: IpAddr) -> Result<Arc<ServerConfig>, String> {
    let key = KeyPair::generate_for(&rcgen::PKCS_ED25519).map_err(|e| e.to_string())?;
    let mut params = CertificateParams::new(Vec::<String>::new()).map_err(|e| e.to_string())?;
    params.subject_alt_names = vec![SanType::IpAddress(ip)];
    params.distinguished_name = DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::OrganizationName, "talos-maintenance");
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let cert = params.self_signed(&key).map_err(|e| e.to_string())?;
    let key_der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    let mut cfg = server_config_builder()?
        .with_no_client_auth()
        .with_single_cert(vec![cert.der().clone()], key_der)
        .map_err(|e| e.to_string())?;
    cfg.alpn_protocols = vec![ALPN_H2.to_vec()];
    Ok(Arc::new(cfg))
}

/// Configured mode: a 24 h server certificate from the OS CA (a key of the CA's algorithm; SANs: the
/// config's certSANs, the node's address, 127.0.0.1 and the hostname), and mandatory client certificates
/// from the same CA.
pub fn configured_server_config(
    cfg: &NodeConfig,
    os_ca_key_pem: &str,
    ip: IpAddr,
) -> Result<Arc<ServerConfig>, String> {
    let ca_key = KeyPair::from_pem(os_ca_key_pem).map_err(|e| format!("machine.ca.key: {e}"))?;
    let alg = ca_key.algorithm();
    let issuer = Issuer::from_ca_cert_pem(&cfg.os_ca_pem, ca_key)
        .map_err(|e| format!("machine.ca.crt: {e}"))?;
    let key = KeyPair::generate_for(alg).map_err(|e| e.to_string())?;
    let mut params = CertificateParams::new(Vec::<String>::new()).map_err(|e| e.to_string())?;
    let mut sans = vec![
        SanType::IpAddress(ip),
        SanType::IpAddress(IpAddr::from([127, 0, 0, 1])),
    ];
    let names = cfg.cert_sans.iter().chain(cfg.hostname.iter());
    for name in names {
        match name.parse::<IpAddr>() {
            Ok(addr) => sans.push(SanType::IpAddress(addr)),
            Err(_) => {
                if let Ok(dns) = name.as_str().try_into() {
                    sans.push(SanType::DnsName(dns));
                }
            }
        }
    }
    params.subject_alt_names = sans;
    params.distinguished_name = DistinguishedName::new();
    if let Some(h) = &cfg.hostname {
        params
            .distinguished_name
            .push(DnType::CommonName, h.as_str());
    }
    let now = OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::minutes(1);
    params.not_after = now + time::Duration::hours(24);
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let cert = params.signed_by(&key, &issuer).map_err(|e| e.to_string())?;

    let mut roots = RootCertStore::empty();
    for ca in certs_from_pem(&cfg.os_ca_pem, "machine.ca.crt").map_err(|e| e.to_string())? {
        roots.add(ca).map_err(|e| e.to_string())?;
    }
    let webpki = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
        .build()
        .map_err(|e| e.to_string())?;
    let verifier = Arc::new(ClientAuthOnly(webpki));
    let key_der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    let mut server = server_config_builder()?
        .with_client_cert_verifier(verifier)
        .with_single_cert(vec![cert.der().clone()], key_der)
        .map_err(|e| e.to_string())?;
    server.alpn_protocols = vec![ALPN_H2.to_vec()];
    Ok(Arc::new(server))
}

/// Chain verification by webpki, plus Talos's rule that every non-CA certificate presented carries
/// ExtKeyUsage exactly `[ClientAuth]`.
#[derive(Debug)]
struct ClientAuthOnly(Arc<dyn ClientCertVerifier>);

fn eku_is_exactly_client_auth(der: &[u8]) -> Result<bool, String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).map_err(|e| e.to_string())?;
    if cert.is_ca() {
        return Ok(true);
    }
    let eku = cert.extended_key_usage().map_err(|e| e.to_string())?;
    Ok(eku.is_some_and(|ext| {
        let e = ext.value;
        e.client_auth
            && !e.any
            && !e.server_auth
            && !e.code_signing
            && !e.email_protection
            && !e.time_stamping
            && !e.ocsp_signing
            && e.other.is_empty()
    }))
}

impl ClientCertVerifier for ClientAuthOnly {
    fn root_hint_subjects(&self) -> &[TlsDn] {
        self.0.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let verified = self.0.verify_client_cert(end_entity, intermediates, now)?;
        for cert in std::iter::once(end_entity).chain(intermediates) {
            match eku_is_exactly_client_auth(cert) {
                Ok(true) => {}
                Ok(false) => {
                    return Err(rustls::Error::General(
                        "client certificate ExtKeyUsage must be exactly ClientAuth".into(),
                    ));
                }
                Err(e) => return Err(rustls::Error::General(format!("client certificate: {e}"))),
            }
        }
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// The Talos roles a verified client certificate carries (`os:admin`, …) in its Subject O.
pub fn roles(leaf: &CertificateDer<'_>) -> Vec<String> {
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(leaf) else {
        return Vec::new();
    };
    cert.subject()
        .iter_organization()
        .filter_map(|o| o.as_str().ok())
        .filter(|o| !o.is_empty())
        .map(str::to_owned)
        .collect()
}

/// What `Kubeconfig` streams: a gzip tar with one file, `kubeconfig` (mode 0600), holding an admin
/// kubeconfig freshly minted from the config's Kubernetes CA, as Talos's `pkg/kubeconfig` makes it.
pub fn kubeconfig_archive(cfg: &NodeConfig) -> Result<Vec<u8>, String> {
    use base64::Engine;
    use base64::engine::general_purpose::STANDARD;

    use crate::talos::credentials::mint_kubernetes_client_cert;
    use crate::talos::pki::{CertificateAuthority, PrivateKeyPem};

    let (Some(ca_pem), Some(ca_key)) = (&cfg.k8s_ca_pem, &cfg.k8s_ca_key_pem) else {
        return Err("cluster.ca is not set in this node's config".into());
    };
    let ca =
        CertificateAuthority::from_pem(ca_pem, PrivateKeyPem::new(ca_key.clone()), "cluster.ca")
            .map_err(|e| e.to_string())?;
    let now = OffsetDateTime::now_utc();
    let client = mint_kubernetes_client_cert(
        &ca,
        "admin",
        "system:masters",
        now - time::Duration::seconds(10),
        std::time::Duration::from_secs(8760 * 3600),
    )
    .map_err(|e| e.to_string())?;
    let name = &cfg.cluster_name;
    let user = format!("admin@{name}");
    let doc = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": name, "cluster": {
            "server": cfg.endpoint,
            "certificate-authority-data": STANDARD.encode(ca_pem),
        }}],
        "users": [{"name": user, "user": {
            "client-certificate-data": STANDARD.encode(&client.cert.cert_pem),
            "client-key-data": STANDARD.encode(client.cert.key_pem.expose()),
        }}],
        "contexts": [{"name": user, "context": {"cluster": name, "namespace": "default", "user": user}}],
        "current-context": user,
    });
    let yaml = serde_yaml::to_string(&doc).map_err(|e| e.to_string())?;

    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    {
        let mut tar = tar::Builder::new(&mut gz);
        let mut header = tar::Header::new_gnu();
        header.set_size(yaml.len() as u64);
        header.set_mode(0o600);
        header.set_mtime(now.unix_timestamp().max(0) as u64);
        header.set_entry_type(tar::EntryType::Regular);
        header.set_cksum();
        tar.append_data(&mut header, "kubeconfig", yaml.as_bytes())
            .map_err(|e| e.to_string())?;
        tar.finish().map_err(|e| e.to_string())?;
    }
    gz.flush().map_err(|e| e.to_string())?;
    gz.finish().map_err(|e| e.to_string())
}
