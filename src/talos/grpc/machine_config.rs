//! The machine config a configured node runs, as Talos serves it over COSI.
//!
//! siderolabs/talos v1.13.9 `pkg/machinery/resources/config/machine_config.go`: type
//! `MachineConfigs.config.talos.dev` in namespace `config`; id `v1alpha1` is the config applied to
//! the running OS (`persistent` the one saved for the next boot). Its spec marshals to YAML as one
//! string holding the config's bytes (`spec: |`), and its resource definition is `meta.Sensitive`, which
//! `internal/app/resources/access.go` lets only `os:admin` read (anyone else: PermissionDenied "not
//! authorized").

use super::client::TalosClient;
use super::error::TalosError;

pub const MACHINE_CONFIG: (&str, &str, &str) =
    ("config", "MachineConfigs.config.talos.dev", "v1alpha1");

/// The YAML stream of the config the node runs now.
pub async fn running_config(client: &TalosClient) -> Result<String, TalosError> {
    let (ns, ty, id) = MACHINE_CONFIG;
    let res = client.cosi_get(ns, ty, id).await?;
    let yaml = res.spec.map(|s| s.yaml_spec).unwrap_or_default();
    spec_text(&yaml).map_err(|message| TalosError::Malformed {
        addr: client.addr(),
        method: super::proto::paths::COSI_GET,
        message,
    })
}

/// The spec is a YAML string whose value is the config (not the config's documents themselves).
pub fn spec_text(yaml_spec: &str) -> Result<String, String> {
    match serde_yaml::from_str::<serde_yaml::Value>(yaml_spec) {
        Ok(serde_yaml::Value::String(text)) => Ok(text),
        Ok(_) => Err("MachineConfig spec is not the config as a YAML string".into()),
        Err(e) => Err(format!("MachineConfig spec: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_spec_is_the_config_text_as_one_string() {
        // As `talosctl get mc -o yaml` prints it (the resource's testdata in Talos).
        let spec =
            "|\n    version: v1alpha1\n    debug: false\n    machine:\n      type: controlplane\n";
        assert_eq!(
            spec_text(spec).unwrap(),
            "version: v1alpha1\ndebug: false\nmachine:\n  type: controlplane\n"
        );
        assert!(spec_text("version: v1alpha1\n").is_err());
    }
}
