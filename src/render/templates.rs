//! The embedded templates and the minijinja environment: strict about undefined values (a typo is an
//! error naming template and line, never an empty string), no auto-escaping (templates quote with
//! `tojson`, which is valid YAML), and each template replaceable from the repository's `templates/`.

use std::collections::{BTreeMap, BTreeSet};

use minijinja::syntax::SyntaxConfig;
use minijinja::{AutoEscape, Environment, Error, ErrorKind, UndefinedBehavior, Value};

use super::RenderError;

macro_rules! embedded {
    ($($name:literal),* $(,)?) => {
        /// Every template kiln ships, by the file name an override uses.
        pub const EMBEDDED: &[(&str, &str)] = &[
            $(($name, include_str!(concat!("templates/", $name)))),*
        ];
    };
}

embedded!(
    "root.yaml.j2",
    "argocd-cm-health.yaml.j2",
    "cluster-secret-store.yaml.j2",
    "app-project.yaml.j2",
    "fleet-applicationset.yaml.j2",
    "bootstrap-registration.yaml.j2",
    "bootstrap-apps.yaml.j2",
    "cluster-secret.yaml.j2",
    "cluster-facts.yaml.j2",
    "app-application.yaml.j2",
    "app-values.yaml.j2",
    "app-namespace-limits.yaml.j2",
    "app-network-policies.yaml.j2",
    "app-external-secrets-vault-auth.yaml.j2",
    "app-metallb-address-pool.yaml.j2",
);

/// The work one file's render may do (minijinja fuel: about one per instruction and per 64 bytes
/// created). kiln's own templates use a few thousand per file, the shared ones tens per cluster;
/// an override that loops forever or builds huge strings stops here, naming itself.
pub const FUEL_PER_FILE: u64 = 2_000_000;

/// The most bytes one rendered file may have (kiln's largest files are a few KiB per cluster).
pub const MAX_OUTPUT_BYTES: usize = 8 * 1024 * 1024;

/// The compiled templates, with the names of those the repository overrides.
pub struct Templates {
    pub env: Environment<'static>,
    pub overridden: BTreeSet<String>,
}

impl Templates {
    /// Compiles kiln's templates, each replaced by `overrides[name]` when the repository has one.
    /// An override whose name is not a kiln template is refused: it would silently do nothing.
    pub fn new(overrides: &BTreeMap<String, String>) -> Result<Self, RenderError> {
        let known: BTreeSet<&str> = EMBEDDED.iter().map(|(n, _)| *n).collect();
        if let Some(unknown) = overrides.keys().find(|k| !known.contains(k.as_str())) {
            return Err(RenderError::UnknownOverride {
                name: unknown.clone(),
                known: known.iter().copied().collect::<Vec<_>>().join(", "),
            });
        }
        let mut env = Environment::new();
        env.set_undefined_behavior(UndefinedBehavior::Strict);
        env.set_fuel(Some(FUEL_PER_FILE));
        env.set_auto_escape_callback(|_| AutoEscape::None);
        env.set_syntax(
            SyntaxConfig::builder()
                .trim_blocks(true)
                .lstrip_blocks(true)
                .keep_trailing_newline(true)
                .build()
                .map_err(|e| RenderError::from_template(&e, "(syntax)"))?,
        );
        env.add_filter("to_yaml", to_yaml);
        for (name, source) in EMBEDDED {
            match overrides.get(*name) {
                Some(custom) => env.add_template_owned(*name, custom.clone()),
                None => env.add_template(name, source),
            }
            .map_err(|e| RenderError::from_template(&e, name))?;
        }
        Ok(Self {
            env,
            overridden: overrides.keys().cloned().collect(),
        })
    }
}

/// `{{ values | to_yaml }}`: a block YAML document (for Helm values files).
fn to_yaml(value: Value) -> Result<String, Error> {
    serde_yaml::to_string(&value)
        .map(|text| text.trim_end().to_owned())
        .map_err(|e| {
            Error::new(
                ErrorKind::InvalidOperation,
                format!("cannot write YAML: {e}"),
            )
        })
}
