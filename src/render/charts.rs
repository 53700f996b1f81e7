//! The chart pins: the one place that says which Helm chart and version each app is installed from.
//!
//! Copied by hand from the *Chart pins* table of `../shared/schemas/README.md` (repository URL, chart
//! name and version exactly as written there, `v` included for cert-manager). Chart sources use the
//! repositories' https URLs, never OCI, so an Argo CD without OCI credentials helpers can pull them.

use crate::spec::App;

/// Where one app's chart comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChartPin {
    pub repo_url: &'static str,
    pub chart: &'static str,
    /// The Application's `targetRevision`, exactly as the chart is versioned upstream.
    pub version: &'static str,
}

/// The pin of `app`; a `match`, so a new app cannot compile without one.
pub fn pin(app: App) -> ChartPin {
    let (repo_url, chart, version) = match app {
        App::CertManager => ("https://charts.jetstack.io", "cert-manager", "v1.21.1"),
        App::ExternalSecrets => (
            "https://charts.external-secrets.io",
            "external-secrets",
            "2.9.0",
        ),
        // The final release: the project was retired in March 2026 (no further security fixes).
        App::IngressNginx => (
            "https://kubernetes.github.io/ingress-nginx",
            "ingress-nginx",
            "4.15.1",
        ),
        App::Metallb => ("https://metallb.github.io/metallb", "metallb", "0.16.1"),
        App::Longhorn => ("https://charts.longhorn.io", "longhorn", "1.12.1"),
        App::Monitoring => (
            "https://prometheus-community.github.io/helm-charts",
            "kube-prometheus-stack",
            "88.5.3",
        ),
        // Not in the shared pins table (traefik is off by default); see docs/render.md.
        App::Traefik => ("https://traefik.github.io/charts", "traefik", "38.0.2"),
    };
    ChartPin {
        repo_url,
        chart,
        version,
    }
}

/// Every Helm repository kiln's Applications pull from (the AppProject's `sourceRepos`), sorted.
pub fn repo_urls() -> Vec<&'static str> {
    let mut urls: Vec<&'static str> = App::ALL.iter().map(|a| pin(*a).repo_url).collect();
    urls.sort_unstable();
    urls.dedup();
    urls
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pins_match_the_reference_table() {
        assert_eq!(pin(App::CertManager).version, "v1.21.1");
        assert_eq!(pin(App::Monitoring).chart, "kube-prometheus-stack");
        assert!(repo_urls().iter().all(|u| u.starts_with("https://")));
    }
}
