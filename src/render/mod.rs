//! GitOps output (DESIGN §6): Argo CD Applications and ApplicationSets, the ExternalSecret that
//! registers each cluster with Argo CD, Helm values and namespace objects for the core apps.
//!
//! Pure: intent, kiln's version and [`RenderSettings`] in, files out (`path → bytes`, paths relative
//! to the repository root, all under `output_dir`). Never reads observed state, so the same input
//! always gives the same bytes and kiln commits only when intent or configuration changed.
//!
//! The result is the *complete* content of `output_dir`: a file there that the result lacks (a removed
//! cluster, an app turned off) is stale and goes in the same commit. Use one [`Renderer`] per
//! `templates/` revision; [`render`] compiles the templates each call.

mod apps;
mod bounded;
mod charts;
mod context;
mod settings;
mod templates;
mod values;
mod yaml;

use std::collections::BTreeMap;

use minijinja::Value;
use minijinja::value::Serde;

pub use apps::{Openings, Port, Profile, profile, sizing_factor};
pub use bounded::{DEADLINE, render_bounded};
pub use charts::{ChartPin, pin};
pub use settings::{RenderSettings, VaultSettings};
pub use templates::EMBEDDED as TEMPLATES;
pub use templates::{FUEL_PER_FILE, MAX_OUTPUT_BYTES};
pub use values::deep_merge;

use crate::spec::{App, Cluster};
use context::{AppCtx, ClusterCtx, SharedCtx, manifests_dir};
use templates::Templates;

/// Below this many clusters per thread, starting a thread costs more than it saves.
const MIN_CLUSTERS_PER_THREAD: usize = 50;

/// Rendered files: repository-relative path (with `/`) → content.
pub type Rendered = BTreeMap<String, Vec<u8>>;

#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    #[error("template `{template}`{}: {message}", line.map(|l| format!(" line {l}")).unwrap_or_default())]
    Template {
        template: String,
        line: Option<usize>,
        message: String,
    },
    #[error("templates/{name} overrides no kiln template; kiln's templates are: {known}")]
    UnknownOverride { name: String, known: String },
    #[error(
        "templates/{template} produced invalid YAML for {path}: {message} (line {line} of the output)"
    )]
    InvalidOutput {
        template: String,
        path: String,
        line: usize,
        message: String,
    },
    #[error("cluster `{0}` is given twice")]
    DuplicateCluster(String),
    #[error(
        "template `{template}`: rendering did not finish within {}; nothing is committed",
        humantime::format_duration(*after)
    )]
    Deadline {
        template: String,
        after: std::time::Duration,
    },
}

impl RenderError {
    fn from_template(e: &minijinja::Error, fallback_name: &str) -> Self {
        let mut message = e.kind().to_string();
        if let Some(detail) = e.detail() {
            message = format!("{message}: {detail}");
        }
        if e.kind() == minijinja::ErrorKind::OutOfFuel {
            message = format!(
                "{message} (a template may do {FUEL_PER_FILE} steps per file: does it loop without end?)"
            );
        }
        RenderError::Template {
            template: e.name().unwrap_or(fallback_name).to_owned(),
            line: e.line(),
            message,
        }
    }
}

/// Compiled templates, reusable across cycles (only a change to `templates/` needs a new one).
pub struct Renderer {
    templates: Templates,
    /// Upper bound on render threads; default: the machine's parallelism.
    threads: usize,
    /// The template being rendered (index into `TEMPLATES`, plus one), for a deadline's error.
    progress: Option<std::sync::Arc<std::sync::atomic::AtomicUsize>>,
}

/// Renders every cluster with kiln's templates, overridden by `overrides` (file name in the
/// repository's `templates/` folder → its content).
pub fn render(
    clusters: &[Cluster],
    settings: &RenderSettings,
    overrides: &BTreeMap<String, String>,
) -> Result<Rendered, RenderError> {
    Renderer::new(overrides)?.render(clusters, settings)
}

impl Renderer {
    pub fn new(overrides: &BTreeMap<String, String>) -> Result<Self, RenderError> {
        Ok(Self {
            templates: Templates::new(overrides)?,
            threads: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1),
            progress: None,
        })
    }

    /// Reports each template as it starts into `progress` (see `render_bounded`).
    fn watched(mut self, progress: std::sync::Arc<std::sync::atomic::AtomicUsize>) -> Self {
        self.progress = Some(progress);
        self
    }

    /// Renders on at most `threads` threads (1: on the calling thread only).
    pub fn with_threads(mut self, threads: usize) -> Self {
        self.threads = threads.max(1);
        self
    }

    pub fn render(
        &self,
        clusters: &[Cluster],
        settings: &RenderSettings,
    ) -> Result<Rendered, RenderError> {
        let mut sorted: Vec<&Cluster> = clusters.iter().collect();
        sorted.sort_by(|a, b| a.name.cmp(&b.name));
        if let Some(w) = sorted.windows(2).find(|w| w[0].name == w[1].name) {
            return Err(RenderError::DuplicateCluster(w[0].name.to_string()));
        }
        let mut out = Rendered::new();
        self.render_shared(&sorted, settings, &mut out)?;
        // Clusters are independent, so they render in parallel; each thread fills its own map and
        // the maps are joined in cluster order, so bytes and the error reported stay deterministic.
        let threads = self
            .threads
            .min(sorted.len().div_ceil(MIN_CLUSTERS_PER_THREAD))
            .max(1);
        if threads == 1 {
            for cluster in sorted {
                self.render_cluster(cluster, settings, &mut out)?;
            }
            return Ok(out);
        }
        let chunk = sorted.len().div_ceil(threads).max(1);
        let parts: Vec<Result<Rendered, RenderError>> = std::thread::scope(|scope| {
            let handles: Vec<_> = sorted
                .chunks(chunk)
                .map(|part| {
                    scope.spawn(move || {
                        let mut files = Rendered::new();
                        for cluster in part {
                            self.render_cluster(cluster, settings, &mut files)?;
                        }
                        Ok(files)
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join()
                        .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
                })
                .collect()
        });
        for part in parts {
            out.append(&mut part?);
        }
        Ok(out)
    }

    fn render_shared(
        &self,
        clusters: &[&Cluster],
        settings: &RenderSettings,
        out: &mut Rendered,
    ) -> Result<(), RenderError> {
        let o = &settings.output_dir;
        let shared = SharedCtx {
            settings,
            clusters: clusters.iter().map(|c| c.name.as_str()).collect(),
            chart_repos: charts::repo_urls(),
            bootstrap_path: format!("{o}/bootstrap"),
            shared_path: format!("{o}/core/shared"),
            applicationsets_path: format!("{o}/core/applicationsets"),
        };
        let ctx = Value::from(Serde(&shared));
        let from_config = "kiln.toml [git] and [argocd]";
        let from_all = format!("{from_config} and every file in {}/", settings.clusters_dir);
        let files = [
            (
                "root.yaml.j2",
                format!("{o}/bootstrap/root.yaml"),
                // With a project of kiln's own, root.yaml carries the AppProject and its cluster list.
                if settings.project == "default" {
                    from_config
                } else {
                    from_all.as_str()
                },
            ),
            (
                "argocd-cm-health.yaml.j2",
                format!("{o}/bootstrap/argocd-cm-health.yaml"),
                from_config,
            ),
            (
                "cluster-secret-store.yaml.j2",
                format!("{o}/core/shared/cluster-secret-store.yaml"),
                from_config,
            ),
            (
                "app-project.yaml.j2",
                format!("{o}/core/shared/app-project.yaml"),
                from_all.as_str(),
            ),
            (
                "fleet-applicationset.yaml.j2",
                format!("{o}/core/applicationsets/fleet.yaml"),
                from_config,
            ),
        ];
        for (template, path, source) in files {
            self.emit(out, template, path, source, &ctx)?;
        }
        Ok(())
    }

    fn render_cluster(
        &self,
        cluster: &Cluster,
        settings: &RenderSettings,
        out: &mut Rendered,
    ) -> Result<(), RenderError> {
        let _span = tracing::debug_span!("render", cluster = %cluster.name).entered();
        let o = &settings.output_dir;
        let name = cluster.name.as_str();
        let cctx = ClusterCtx::new(cluster, settings);
        let source = cctx.source.clone();
        let enabled = cluster.spec.enabled_apps();
        let settings_value = Value::from(Serde(settings));
        let cluster_value = Value::from(Serde(&cctx));
        let registration_path = format!("{o}/core/clusters/{name}");
        let apps_path = format!("{o}/core/apps/{name}");
        let base = minijinja::context! {
            settings => settings_value.clone(),
            cluster => cluster_value.clone(),
            registration_path => registration_path.clone(),
            apps_path => apps_path.clone(),
        };
        self.emit(
            out,
            "bootstrap-registration.yaml.j2",
            format!("{o}/bootstrap/{name}/registration.yaml"),
            &source,
            &base,
        )?;
        if !enabled.is_empty() {
            // An Application on an empty folder would fail to sync, so no apps means no such file.
            self.emit(
                out,
                "bootstrap-apps.yaml.j2",
                format!("{o}/bootstrap/{name}/apps.yaml"),
                &source,
                &base,
            )?;
        }
        self.emit(
            out,
            "cluster-secret.yaml.j2",
            format!("{o}/core/clusters/{name}/cluster-secret.yaml"),
            &source,
            &base,
        )?;
        self.emit(
            out,
            "cluster-facts.yaml.j2",
            format!("{o}/core/clusters/{name}/facts.yaml"),
            &source,
            &base,
        )?;
        for app in enabled {
            let actx = AppCtx::new(app, cluster, settings);
            let mut values = match apps::kiln_values(app, cluster) {
                serde_json::Value::Object(map) => map,
                _ => unreachable!("kiln_values builds a JSON object"),
            };
            if let Some(user) = cluster.spec.app_spec(app) {
                deep_merge(&mut values, &user.values);
            }
            let values = serde_json::Value::Object(values);
            // One flat map per app: lookups through a merged view over `base` cost time on every
            // expression. The values come as YAML text only; handing each values tree to the
            // template engine as well cost more than any template used it for.
            let ctx = minijinja::context! {
                settings => settings_value.clone(),
                cluster => cluster_value.clone(),
                registration_path => registration_path.clone(),
                apps_path => apps_path.clone(),
                app => Value::from(Serde(&actx)),
                values_yaml => yaml::to_yaml(&values),
            };
            let dir = manifests_dir(settings, app, name);
            self.emit(
                out,
                "app-application.yaml.j2",
                format!("{o}/core/apps/{name}/{}.yaml", app.name()),
                &source,
                &ctx,
            )?;
            self.emit(
                out,
                "app-values.yaml.j2",
                format!("{dir}/values.yaml"),
                &source,
                &ctx,
            )?;
            self.emit(
                out,
                "app-namespace-limits.yaml.j2",
                format!("{dir}/extra/namespace-limits.yaml"),
                &source,
                &ctx,
            )?;
            self.emit(
                out,
                "app-network-policies.yaml.j2",
                format!("{dir}/extra/network-policies.yaml"),
                &source,
                &ctx,
            )?;
            match app {
                App::ExternalSecrets => self.emit(
                    out,
                    "app-external-secrets-vault-auth.yaml.j2",
                    format!("{dir}/extra/vault-auth.yaml"),
                    &source,
                    &ctx,
                )?,
                App::Metallb if cctx.lb_range.is_some() => self.emit(
                    out,
                    "app-metallb-address-pool.yaml.j2",
                    format!("{dir}/extra/address-pool.yaml"),
                    &source,
                    &ctx,
                )?,
                _ => {}
            }
        }
        Ok(())
    }

    /// Renders one file: the header naming its source, then the template's output. Output of a
    /// template the repository overrides is parsed before it is accepted, so a broken override
    /// fails here instead of in Argo CD.
    fn emit(
        &self,
        out: &mut Rendered,
        template: &str,
        path: String,
        source: &str,
        ctx: &Value,
    ) -> Result<(), RenderError> {
        if let Some(progress) = &self.progress
            && let Some(i) = TEMPLATES.iter().position(|(n, _)| *n == template)
        {
            progress.store(i + 1, std::sync::atomic::Ordering::Relaxed);
        }
        let tmpl = self
            .templates
            .env
            .get_template(template)
            .map_err(|e| RenderError::from_template(&e, template))?;
        let mut sink = bounded::CappedOutput::new(MAX_OUTPUT_BYTES);
        let rendered = tmpl.render_captured_to(ctx, &mut sink);
        if sink.overflowed() {
            return Err(RenderError::Template {
                template: template.to_owned(),
                line: None,
                message: format!(
                    "the output for {path} is larger than the limit of {} MiB",
                    MAX_OUTPUT_BYTES / (1024 * 1024)
                ),
            });
        }
        rendered.map_err(|e| RenderError::from_template(&e, template))?;
        let body = sink.into_string().map_err(|_| RenderError::Template {
            template: template.to_owned(),
            line: None,
            message: format!("the output for {path} is not UTF-8"),
        })?;
        if self.templates.overridden.contains(template) {
            check_yaml(template, &path, &body)?;
        }
        let mut text = String::with_capacity(body.len() + source.len() + 48);
        text.push_str("# generated by kiln from ");
        text.push_str(source);
        text.push_str(" — do not edit\n");
        text.push_str(&body);
        if !text.ends_with('\n') {
            text.push('\n');
        }
        out.insert(path, text.into_bytes());
        Ok(())
    }
}

fn check_yaml(template: &str, path: &str, body: &str) -> Result<(), RenderError> {
    use serde::Deserialize;
    for doc in serde_yaml::Deserializer::from_str(body) {
        if let Err(e) = serde_yaml::Value::deserialize(doc) {
            return Err(RenderError::InvalidOutput {
                template: template.to_owned(),
                path: path.to_owned(),
                line: e.location().map(|l| l.line()).unwrap_or(0),
                message: e.to_string(),
            });
        }
    }
    Ok(())
}
