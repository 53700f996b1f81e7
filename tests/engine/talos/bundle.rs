//! The secrets bundle and the certificates minted from it, checked with x509-parser (an independent
//! parser), signature verification against the issuing CA, and rustls's own WebPKI client verifier.

use std::net::IpAddr;
use std::sync::{Arc, OnceLock};

use ::time::OffsetDateTime;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use kiln::talos::credentials::{self, TalosRole};
use kiln::talos::{CertificateAuthority, SecretsBundle};
use rustls::server::danger::ClientCertVerifier;
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::ParsedExtension;
use x509_parser::parse_x509_certificate;
use x509_parser::x509::X509Version;

fn bundle() -> &'static SecretsBundle {
    static B: OnceLock<SecretsBundle> = OnceLock::new();
    B.get_or_init(|| SecretsBundle::generate().expect("bundle generates"))
}

fn der(pem_text: &str) -> Vec<u8> {
    ::pem::parse(pem_text).expect("PEM").into_contents()
}

fn with_cert<R>(pem_text: &str, f: impl FnOnce(&X509Certificate<'_>) -> R) -> R {
    let d = der(pem_text);
    let (rest, c) = parse_x509_certificate(&d).expect("certificate parses");
    assert!(rest.is_empty());
    f(&c)
}

fn subject_o(c: &X509Certificate<'_>) -> Vec<String> {
    c.subject()
        .iter_organization()
        .map(|a| a.as_str().unwrap().to_owned())
        .collect()
}

fn eku(c: &X509Certificate<'_>) -> (bool, bool, usize) {
    let e = c.extended_key_usage().unwrap().expect("EKU present").value;
    (e.server_auth, e.client_auth, e.other.len())
}

fn check_ca(ca: &CertificateAuthority, org: Option<&str>, oid: &str) {
    with_cert(ca.cert_pem(), |c| {
        assert_eq!(c.version(), X509Version::V3);
        assert_eq!(c.subject(), c.issuer(), "self-signed");
        assert_eq!(
            subject_o(c),
            org.map(|o| vec![o.to_owned()]).unwrap_or_default()
        );
        if org.is_none() {
            assert_eq!(
                c.subject().iter().count(),
                0,
                "aggregator CA subject is empty"
            );
        }
        c.verify_signature(None).expect("self-signature verifies");
        let bc = c.basic_constraints().unwrap().expect("basic constraints");
        assert!(bc.value.ca && bc.critical);
        let ku = c.key_usage().unwrap().expect("key usage");
        assert!(ku.critical);
        assert!(ku.value.key_cert_sign() && ku.value.digital_signature());
        assert!(!ku.value.key_encipherment());
        assert_eq!(eku(c), (true, true, 0));
        let ski = c
            .iter_extensions()
            .find_map(|e| match e.parsed_extension() {
                ParsedExtension::SubjectKeyIdentifier(k) => Some(k.0.len()),
                _ => None,
            })
            .expect("SKI");
        assert_eq!(ski, 20);
        let life = c.validity().not_after.timestamp() - c.validity().not_before.timestamp();
        assert_eq!(life, 87_600 * 3600, "10-year CA");
        assert!(c.raw_serial().len() <= 17);
        assert_eq!(c.public_key().algorithm.algorithm.to_id_string(), oid);
    });
}

#[test]
fn bundle_cas_have_talos_algorithms_subjects_and_usages() {
    let b = bundle();
    check_ca(&b.os_ca, Some("talos"), "1.3.101.112");
    check_ca(&b.etcd_ca, Some("etcd"), "1.2.840.10045.2.1");
    check_ca(&b.k8s_ca, Some("kubernetes"), "1.2.840.10045.2.1");
    check_ca(&b.k8s_aggregator_ca, None, "1.2.840.10045.2.1");
    let label = |p: &str| ::pem::parse(p).unwrap().tag().to_owned();
    assert_eq!(label(b.os_ca.key_pem().expose()), "ED25519 PRIVATE KEY");
    assert_eq!(label(b.etcd_ca.key_pem().expose()), "EC PRIVATE KEY");
    assert_eq!(label(b.service_account_key.expose()), "RSA PRIVATE KEY");
    let sa = aws_lc_rs::rsa::KeyPair::from_der(&der(b.service_account_key.expose()))
        .expect("PKCS#1 RSA key");
    assert_eq!(sa.public_modulus_len(), 512, "RSA-4096");
}

#[test]
fn bundle_round_trips_through_talos_yaml() {
    let b = bundle();
    let yaml = b.to_yaml();
    let back = SecretsBundle::from_yaml(&yaml).expect("own YAML reads back");
    assert_eq!(&back, b);
    assert_eq!(back.to_yaml(), yaml, "byte-identical second serialisation");

    // The keys talosctl writes, nothing else; Talos's 4-space indentation reads the same.
    let v: serde_yaml::Value = serde_yaml::from_str(&yaml).unwrap();
    let keys = |v: &serde_yaml::Value| -> Vec<String> {
        v.as_mapping()
            .unwrap()
            .keys()
            .map(|k| k.as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(keys(&v), ["cluster", "secrets", "trustdinfo", "certs"]);
    assert_eq!(keys(&v["cluster"]), ["id", "secret"]);
    assert_eq!(
        keys(&v["secrets"]),
        ["bootstraptoken", "secretboxencryptionsecret"]
    );
    assert_eq!(
        keys(&v["certs"]),
        ["etcd", "k8s", "k8saggregator", "k8sserviceaccount", "os"]
    );
    let id = URL_SAFE_DECODE(v["cluster"]["id"].as_str().unwrap());
    assert_eq!(id.len(), 32);
    assert_eq!(
        STANDARD
            .decode(v["cluster"]["secret"].as_str().unwrap())
            .unwrap()
            .len(),
        32
    );
    let four_space = yaml
        .lines()
        .map(|l| {
            let n = l.len() - l.trim_start().len();
            format!("{}{}", " ".repeat(n * 2), l.trim_start())
        })
        .collect::<Vec<_>>()
        .join("\n");
    assert_eq!(&SecretsBundle::from_yaml(&four_space).unwrap(), b);
}

#[allow(non_snake_case)]
fn URL_SAFE_DECODE(s: &str) -> Vec<u8> {
    base64::engine::general_purpose::URL_SAFE.decode(s).unwrap()
}

#[test]
fn bundle_yaml_refuses_tampering() {
    let yaml = bundle().to_yaml();
    let extra = yaml.replacen("cluster:\n", "cluster:\n  extra: 1\n", 1);
    assert!(
        SecretsBundle::from_yaml(&extra).is_err(),
        "unknown key refused"
    );
    let bad_token = yaml.replace(bundle().trustd_token.expose(), "nope");
    assert!(
        SecretsBundle::from_yaml(&bad_token).is_err(),
        "bad token refused"
    );
    // A CA whose key belongs to another CA.
    let v: serde_yaml::Value = serde_yaml::from_str(&yaml).unwrap();
    let etcd_key = v["certs"]["etcd"]["key"].as_str().unwrap();
    let k8s_key = v["certs"]["k8s"]["key"].as_str().unwrap();
    let swapped = yaml.replace(etcd_key, "X").replace(k8s_key, etcd_key);
    let swapped = swapped.replace(": X", &format!(": {k8s_key}"));
    assert!(
        SecretsBundle::from_yaml(&swapped).is_err(),
        "mismatched key refused"
    );
}

#[test]
fn two_bundles_share_nothing() {
    let a = bundle();
    let b = SecretsBundle::generate().unwrap();
    assert_ne!(a.cluster_id, b.cluster_id);
    assert_ne!(a.os_ca.cert_pem(), b.os_ca.cert_pem());
    assert_ne!(a.service_account_key, b.service_account_key);
}

fn verifier(ca_pem: &str) -> Arc<dyn ClientCertVerifier> {
    let roots = Arc::new(credentials::root_store(ca_pem).unwrap());
    rustls::server::WebPkiClientVerifier::builder_with_provider(
        roots,
        Arc::new(rustls::crypto::aws_lc_rs::default_provider()),
    )
    .build()
    .unwrap()
}

#[test]
fn talos_client_cert_is_os_admin_client_auth_only_and_chains() {
    let b = bundle();
    let now = OffsetDateTime::now_utc();
    let c = credentials::mint_talos_client_cert(
        &b.os_ca,
        TalosRole::Admin,
        now,
        credentials::KILN_CERT_TTL,
    )
    .unwrap();
    with_cert(&c.cert.cert_pem, |x| {
        assert_eq!(subject_o(x), ["os:admin"]);
        assert_eq!(x.subject().iter_common_name().count(), 0, "no CN");
        assert_eq!(eku(x), (false, true, 0), "EKU exactly ClientAuth");
        let ku = x.key_usage().unwrap().unwrap().value;
        assert!(ku.digital_signature() && !ku.key_cert_sign());
        assert!(x.basic_constraints().unwrap().is_none_or(|b| !b.value.ca));
        with_cert(b.os_ca.cert_pem(), |ca| {
            assert_eq!(x.issuer(), ca.subject());
            x.verify_signature(Some(ca.public_key()))
                .expect("signed by the OS CA");
        });
        assert_eq!(
            x.validity().not_after.timestamp() - x.validity().not_before.timestamp(),
            3600
        );
        assert_eq!(
            x.public_key().algorithm.algorithm.to_id_string(),
            "1.3.101.112"
        );
    });
    // rustls accepts it as a client of the OS CA, and refuses one from another bundle's CA.
    let (chain, _key) = c.cert.to_rustls().unwrap();
    let v = verifier(b.os_ca.cert_pem());
    let t = rustls_pki_types::UnixTime::now();
    v.verify_client_cert(&chain[0], &[], t)
        .expect("chains to the OS CA");
    let stranger =
        CertificateAuthority::generate(Some("talos"), kiln::talos::KeyAlgorithm::Ed25519, now)
            .unwrap();
    let foreign = credentials::mint_talos_client_cert(
        &stranger,
        TalosRole::Admin,
        now,
        credentials::KILN_CERT_TTL,
    )
    .unwrap();
    let (fchain, _) = foreign.cert.to_rustls().unwrap();
    assert!(v.verify_client_cert(&fchain[0], &[], t).is_err());
}

#[test]
fn talosconfig_has_a_context_per_cluster_with_cp_endpoints() {
    let b = bundle();
    let ips: Vec<IpAddr> = vec![
        "192.168.2.161".parse().unwrap(),
        "192.168.2.162".parse().unwrap(),
    ];
    let tc = credentials::talosconfig("production", &ips, b, OffsetDateTime::now_utc()).unwrap();
    let v: serde_yaml::Value = serde_yaml::from_str(tc.yaml.expose()).unwrap();
    assert_eq!(v["context"].as_str(), Some("production"));
    let ctx = &v["contexts"]["production"];
    let eps: Vec<&str> = ctx["endpoints"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|e| e.as_str().unwrap())
        .collect();
    assert_eq!(eps, ["192.168.2.161", "192.168.2.162"]);
    let ca = String::from_utf8(STANDARD.decode(ctx["ca"].as_str().unwrap()).unwrap()).unwrap();
    assert_eq!(ca, b.os_ca.cert_pem());
    let crt = String::from_utf8(STANDARD.decode(ctx["crt"].as_str().unwrap()).unwrap()).unwrap();
    let key = String::from_utf8(STANDARD.decode(ctx["key"].as_str().unwrap()).unwrap()).unwrap();
    assert!(
        key.starts_with("-----BEGIN ED25519 PRIVATE KEY-----"),
        "talosctl's label"
    );
    with_cert(&crt, |x| {
        assert_eq!(subject_o(x), ["os:admin"]);
        assert_eq!(eku(x), (false, true, 0));
        assert_eq!(
            x.validity().not_after.timestamp() - x.validity().not_before.timestamp(),
            8760 * 3600
        );
    });
    // The key relabels into something rustls loads.
    let pk = kiln::talos::PrivateKeyPem::new(key).relabelled().unwrap();
    assert!(pk.expose().starts_with("-----BEGIN PRIVATE KEY-----"));
    assert!(rustls::crypto::aws_lc_rs::sign::any_supported_type(&pk.to_der("k").unwrap()).is_ok());
}

#[test]
fn admin_kubeconfig_matches_talos() {
    let b = bundle();
    let kc = credentials::admin_kubeconfig(
        "production",
        "https://192.168.2.160:6443",
        b,
        OffsetDateTime::now_utc(),
    )
    .unwrap();
    let v: serde_yaml::Value = serde_yaml::from_str(kc.yaml.expose()).unwrap();
    assert_eq!(v["apiVersion"].as_str(), Some("v1"));
    assert_eq!(v["kind"].as_str(), Some("Config"));
    assert_eq!(v["current-context"].as_str(), Some("admin@production"));
    assert_eq!(v["clusters"][0]["name"].as_str(), Some("production"));
    assert_eq!(
        v["clusters"][0]["cluster"]["server"].as_str(),
        Some("https://192.168.2.160:6443")
    );
    assert_eq!(v["users"][0]["name"].as_str(), Some("admin@production"));
    assert_eq!(
        v["contexts"][0]["context"]["namespace"].as_str(),
        Some("default")
    );
    let crt = String::from_utf8(
        STANDARD
            .decode(
                v["users"][0]["user"]["client-certificate-data"]
                    .as_str()
                    .unwrap(),
            )
            .unwrap(),
    )
    .unwrap();
    with_cert(&crt, |x| {
        assert_eq!(subject_o(x), ["system:masters"]);
        let cn: Vec<_> = x
            .subject()
            .iter_common_name()
            .map(|a| a.as_str().unwrap())
            .collect();
        assert_eq!(cn, ["admin"]);
        assert_eq!(eku(x), (false, true, 0));
        let ku = x.key_usage().unwrap().unwrap().value;
        assert!(ku.digital_signature() && ku.key_encipherment());
        with_cert(b.k8s_ca.cert_pem(), |ca| {
            x.verify_signature(Some(ca.public_key()))
                .expect("signed by the k8s CA");
        });
        assert_eq!(
            x.validity().not_after.timestamp() - x.validity().not_before.timestamp(),
            8760 * 3600
        );
    });
    let (chain, _) = kc.client.cert.to_rustls().unwrap();
    verifier(b.k8s_ca.cert_pem())
        .verify_client_cert(&chain[0], &[], rustls_pki_types::UnixTime::now())
        .expect("k8s client chains to the Kubernetes CA");
}

#[test]
fn node_server_cert_is_server_auth_with_node_sans() {
    let b = bundle();
    let ip: IpAddr = "192.168.2.161".parse().unwrap();
    let s = credentials::mint_talos_server_cert(
        &b.os_ca,
        "production-cp-1",
        &[ip],
        OffsetDateTime::now_utc(),
    )
    .unwrap();
    with_cert(&s.cert.cert_pem, |x| {
        assert_eq!(eku(x), (true, false, 0), "EKU ServerAuth only");
        let cn: Vec<_> = x
            .subject()
            .iter_common_name()
            .map(|a| a.as_str().unwrap())
            .collect();
        assert_eq!(cn, ["production-cp-1"]);
        let san = x.subject_alternative_name().unwrap().unwrap().value;
        let text = format!("{:?}", san.general_names);
        assert!(text.contains("production-cp-1"), "{text}");
        assert_eq!(
            x.validity().not_after.timestamp() - x.validity().not_before.timestamp(),
            24 * 3600
        );
        with_cert(b.os_ca.cert_pem(), |ca| {
            x.verify_signature(Some(ca.public_key()))
                .expect("signed by the OS CA");
        });
    });
}
