//! Talos's `RuntimeValidate` as far as kiln meets it: the Kubernetes image tags of a config against the
//! Talos version the node *runs* (siderolabs/talos v1.13.9
//! `pkg/machinery/config/types/v1alpha1/v1alpha1_validation.go` `RuntimeValidate` and
//! `ValidateKubernetesImageTag`). ApplyConfiguration runs it after `Validate`, in maintenance mode too
//! (`internal/app/machined/internal/server/v1alpha1/v1alpha1_server.go` ~L229 on 1.13;
//! `internal/app/maintenance/server.go` ~L111 on 1.11), and answers `InvalidArgument`.

use serde_yaml::Value;

use super::config::v1alpha1;
use crate::spec::Version;
use crate::spec::compat::kubernetes_supported;

fn image_at<'a>(v1: &'a Value, path: &[&str]) -> Option<&'a str> {
    let mut cur = v1;
    for p in path {
        cur = cur.get(*p)?;
    }
    cur.as_str()
}

/// `KubernetesVersionFromImageRef`: the text after the last `:v`, before any `@digest`; a pre-release
/// or build suffix does not count.
fn kubernetes_version(image: &str) -> Result<Version, String> {
    let idx = image
        .rfind(":v")
        .ok_or_else(|| format!("invalid image reference: {image:?}"))?;
    let rest = &image[idx + 2..];
    let rest = rest.split('@').next().unwrap_or(rest);
    let core = rest.split(['-', '+']).next().unwrap_or(rest);
    format!("v{core}").parse().map_err(|e: String| {
        format!("failed to parse Kubernetes version from image reference {image:?}: {e}")
    })
}

fn check_image(talos: Version, image: &str) -> Result<(), String> {
    let k8s = kubernetes_version(image)?;
    kubernetes_supported(talos, k8s).map_err(|e| e.to_string())
}

/// The errors Talos's `RuntimeValidate` would collect, formatted as its multierror prints them; `Ok` when
/// there are none. `running` is the node's Talos version (`v1.11.6`).
pub fn validate(running: &str, docs: &[Value]) -> Result<(), String> {
    let Ok(talos) = running.parse::<Version>() else {
        return Err(format!("failed to parse Talos version: {running:?}"));
    };
    let Some(v1) = v1alpha1(docs) else {
        return Ok(());
    };
    let mut errors = Vec::new();
    if let Some(image) = image_at(v1, &["machine", "kubelet", "image"])
        && let Err(e) = check_image(talos, image)
    {
        errors.push(format!("kubelet image is not valid: {e}"));
    }
    if image_at(v1, &["machine", "type"]) == Some("controlplane") {
        for (name, key) in [
            ("kube-apiserver", "apiServer"),
            ("kube-controller-manager", "controllerManager"),
            ("kube-scheduler", "scheduler"),
        ] {
            if let Some(image) = image_at(v1, &["cluster", key, "image"])
                && let Err(e) = check_image(talos, image)
            {
                errors.push(format!("{name} image is not valid: {e}"));
            }
        }
    }
    if errors.is_empty() {
        return Ok(());
    }
    // hashicorp/go-multierror's ListFormatFunc, as Talos returns it.
    let noun = if errors.len() == 1 {
        "1 error occurred".to_owned()
    } else {
        format!("{} errors occurred", errors.len())
    };
    let items: String = errors.iter().map(|e| format!("\n\t* {e}")).collect();
    Err(format!("{noun}:{items}\n\n"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn docs(kubelet: &str, apiserver: &str) -> Vec<Value> {
        vec![
            serde_yaml::from_str(&format!(
                "version: v1alpha1\nmachine:\n  type: controlplane\n  kubelet:\n    image: {kubelet}\n\
                 cluster:\n  apiServer:\n    image: {apiserver}\n"
            ))
            .unwrap(),
        ]
    }

    #[test]
    fn the_running_minor_decides() {
        let d = docs(
            "ghcr.io/siderolabs/kubelet:v1.35.0",
            "registry.k8s.io/kube-apiserver:v1.35.0",
        );
        assert_eq!(validate("v1.13.9", &d), Ok(()));
        let err = validate("v1.11.6", &d).unwrap_err();
        assert!(err.starts_with("2 errors occurred:"), "{err}");
        assert!(
            err.contains("kubelet image is not valid: version of Kubernetes 1.35.0 is too new to be used with Talos 1.11.6"),
            "{err}"
        );
        assert!(err.contains("kube-apiserver image is not valid"), "{err}");
        let old = docs(
            "ghcr.io/siderolabs/kubelet:v1.30.1-rc.0",
            "registry.k8s.io/kube-apiserver:v1.31.0",
        );
        let err = validate("v1.13.9", &old).unwrap_err();
        assert!(err.starts_with("1 error occurred:"), "{err}");
        assert!(err.contains("1.30.1 is too old"), "{err}");
    }
}
