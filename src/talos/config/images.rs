//! The Kubernetes versions a machine config names: the image tags of the kubelet
//! (`machine.kubelet.image`) and, on a control plane, of the API server, controller manager,
//! scheduler and kube-proxy (`cluster.apiServer.image`, …). What a node runs is what its running
//! config names: Talos starts the kubelet and the static pods from exactly these images
//! (`talosctl upgrade-k8s` reads and patches the same fields, v1.13.9
//! `pkg/cluster/kubernetes/talos_managed.go`, `kubelet.go`).

use serde::Deserialize;
use serde_yaml::Value;

use super::render::KubernetesImages;
use crate::spec::Version;

/// Each component's version as a config names it; `None` when the config names no image for it (a
/// worker's config has no control-plane images) or a tag that is not a version.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NamedImages {
    pub apiserver: Option<Version>,
    pub controller_manager: Option<Version>,
    pub scheduler: Option<Version>,
    pub proxy: Option<Version>,
    pub kubelet: Option<Version>,
}

impl NamedImages {
    /// What to render a node's config with so that its Kubernetes stays as it runs: the versions
    /// it names, and `fallback` for a component it does not name (which the config of its role does
    /// not carry).
    pub fn or(&self, fallback: Version) -> KubernetesImages {
        KubernetesImages {
            apiserver: self.apiserver.unwrap_or(fallback),
            controller_manager: self.controller_manager.unwrap_or(fallback),
            scheduler: self.scheduler.unwrap_or(fallback),
            proxy: self.proxy.unwrap_or(fallback),
            kubelet: self.kubelet.unwrap_or(fallback),
        }
    }
}

fn tag(image: Option<&Value>) -> Option<Version> {
    let image = image?.as_str()?;
    // A digest pins the image; the tag before it still names the version.
    let image = image.split('@').next()?;
    let (_, tag) = image.rsplit_once(':')?;
    if tag.contains('/') {
        return None;
    }
    tag.parse().ok()
}

/// The images the v1alpha1 document of a config stream names.
pub fn named_images(config: &str) -> NamedImages {
    for doc in serde_yaml::Deserializer::from_str(config) {
        let Ok(value) = Value::deserialize(doc) else {
            continue;
        };
        if value.get("machine").is_none() && value.get("cluster").is_none() {
            continue;
        }
        let cluster = value.get("cluster");
        let image = |section: &str| {
            cluster
                .and_then(|c| c.get(section))
                .and_then(|s| s.get("image"))
        };
        return NamedImages {
            apiserver: tag(image("apiServer")),
            controller_manager: tag(image("controllerManager")),
            scheduler: tag(image("scheduler")),
            proxy: tag(image("proxy")),
            kubelet: tag(value
                .get("machine")
                .and_then(|m| m.get("kubelet"))
                .and_then(|k| k.get("image"))),
        };
    }
    NamedImages::default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &str) -> Version {
        s.parse().unwrap()
    }

    #[test]
    fn a_rendered_config_names_what_it_was_rendered_with() {
        let text = include_str!("../../../examples/clusters/production.yaml");
        let outcome = crate::spec::load([(std::path::Path::new("production.yaml"), text)]);
        let cluster = &outcome.clusters[0];
        let bundle = crate::talos::secrets::SecretsBundle::generate().unwrap();
        let images = KubernetesImages {
            scheduler: v("v1.35.4"),
            ..KubernetesImages::uniform(v("v1.34.1"))
        };
        let cp = cluster.control_planes().next().unwrap();
        let yaml = super::super::render_documents_with(
            cluster,
            cp,
            &bundle,
            cluster.spec.talos.version,
            &images,
        )
        .unwrap()
        .to_yaml();
        let named = named_images(&yaml);
        assert_eq!(named.or(v("v9.9.9")), images);
        let worker = cluster.workers().next().unwrap();
        let yaml = super::super::render_documents_with(
            cluster,
            worker,
            &bundle,
            cluster.spec.talos.version,
            &images,
        )
        .unwrap()
        .to_yaml();
        let named = named_images(&yaml);
        assert_eq!(named.kubelet, Some(v("v1.34.1")));
        assert_eq!(
            named.apiserver, None,
            "a worker's config names no control-plane image"
        );
    }

    #[test]
    fn digests_and_odd_tags() {
        let named = named_images(
            "version: v1alpha1\nmachine:\n  kubelet:\n    image: ghcr.io/siderolabs/kubelet:v1.35.0@sha256:abc\n\
             cluster:\n  apiServer:\n    image: registry.lan:5000/kube-apiserver\n",
        );
        assert_eq!(named.kubelet, Some(v("v1.35.0")));
        assert_eq!(named.apiserver, None);
    }
}
