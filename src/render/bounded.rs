//! Rendering with bounds (DESIGN.md §8): a template override from the repository is code a pull
//! request controls. Fuel (set on the environment) bounds each file's work, [`CappedOutput`] its
//! size, and [`render_bounded`] the whole render in time — off the async runtime, so one that runs
//! long never stalls the engine's other work.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::Duration;

use super::{RenderError, RenderSettings, Rendered, Renderer, TEMPLATES};
use crate::spec::Cluster;

/// How long the engine waits for one render of every cluster. kiln's own templates render 1,000
/// clusters in about a second; fuel stops a runaway override long before this in practice, so the
/// deadline is the backstop for what fuel does not count.
pub const DEADLINE: Duration = Duration::from_secs(60);

/// Renders as [`super::render`] does, on a blocking thread (tokio's blocking pool inside a runtime,
/// else a thread of its own), and gives up after `deadline` with an error naming the template that
/// was running. A render that outlives its deadline keeps its thread until its fuel runs out; its
/// result is dropped.
pub fn render_bounded(
    clusters: Vec<Cluster>,
    settings: &RenderSettings,
    overrides: &BTreeMap<String, String>,
    deadline: Duration,
) -> Result<Rendered, RenderError> {
    let progress = Arc::new(AtomicUsize::new(0));
    let (tx, rx) = mpsc::channel();
    let job = {
        let settings = settings.clone();
        let overrides = overrides.clone();
        let progress = progress.clone();
        move || {
            let result = Renderer::new(&overrides)
                .and_then(|r| r.watched(progress).render(&clusters, &settings));
            let _ = tx.send(result);
        }
    };
    let runtime = tokio::runtime::Handle::try_current().ok();
    match &runtime {
        Some(handle) => drop(handle.spawn_blocking(job)),
        None => drop(std::thread::spawn(job)),
    }
    let wait = || rx.recv_timeout(deadline);
    // On a multi-threaded runtime the waiting worker hands its other tasks to the rest first.
    let received = match runtime.map(|h| h.runtime_flavor()) {
        Some(tokio::runtime::RuntimeFlavor::MultiThread) => tokio::task::block_in_place(wait),
        _ => wait(),
    };
    match received {
        Ok(result) => result,
        Err(_) => {
            let template = running_template(progress.load(Ordering::Relaxed));
            Err(RenderError::Deadline {
                template: template.to_owned(),
                after: deadline,
            })
        }
    }
}

/// The template a render's progress counter names (0: none started yet).
fn running_template(progress: usize) -> &'static str {
    progress
        .checked_sub(1)
        .and_then(|i| TEMPLATES.get(i))
        .map_or("(compiling the templates)", |(n, _)| n)
}

/// An output sink that refuses to grow past a limit, so a template that writes without end fails
/// at the limit instead of exhausting memory.
pub(super) struct CappedOutput {
    buf: Vec<u8>,
    limit: usize,
    overflowed: bool,
}

impl CappedOutput {
    pub(super) fn new(limit: usize) -> Self {
        Self {
            buf: Vec::new(),
            limit,
            overflowed: false,
        }
    }

    pub(super) fn overflowed(&self) -> bool {
        self.overflowed
    }

    pub(super) fn into_string(self) -> Result<String, std::string::FromUtf8Error> {
        String::from_utf8(self.buf)
    }
}

impl std::io::Write for CappedOutput {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        if self.buf.len() + data.len() > self.limit {
            self.overflowed = true;
            return Err(std::io::Error::other("output limit reached"));
        }
        self.buf.extend_from_slice(data);
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn production() -> Vec<Cluster> {
        let text = include_str!("../../examples/clusters/production.yaml");
        let outcome = crate::spec::load([(std::path::Path::new("production.yaml"), text)]);
        assert!(outcome.is_valid(), "{:?}", outcome.invalid);
        outcome.clusters
    }

    fn overriding(name: &str, source: &str) -> BTreeMap<String, String> {
        BTreeMap::from([(name.to_owned(), source.to_owned())])
    }

    fn render_with(overrides: &BTreeMap<String, String>, deadline: Duration) -> RenderError {
        render_bounded(
            production(),
            &RenderSettings::default(),
            overrides,
            deadline,
        )
        .expect_err("the override must be refused")
    }

    #[test]
    fn kiln_templates_render_within_the_bounds() {
        let files = render_bounded(
            production(),
            &RenderSettings::default(),
            &BTreeMap::new(),
            DEADLINE,
        )
        .unwrap();
        assert!(files.len() > 20);
    }

    #[test]
    fn an_override_that_never_ends_runs_out_of_fuel_naming_itself() {
        // 10^15 iterations: without fuel this runs for days.
        let endless = "{% for a in range(100000) %}{% for b in range(100000) %}\
                       {% for c in range(100000) %}{% endfor %}{% endfor %}{% endfor %}";
        let e = render_with(&overriding("cluster-facts.yaml.j2", endless), DEADLINE);
        let text = e.to_string();
        assert!(text.contains("cluster-facts.yaml.j2"), "{text}");
        assert!(text.contains("fuel"), "{text}");
    }

    #[test]
    fn an_override_with_huge_output_is_refused_naming_itself() {
        // Few steps, much output: `*` builds the string in one instruction.
        let huge = "{% for i in range(64) %}{{ 'x' * 1048576 }}{% endfor %}";
        let e = render_with(&overriding("cluster-facts.yaml.j2", huge), DEADLINE);
        let text = e.to_string();
        assert!(text.contains("cluster-facts.yaml.j2"), "{text}");
    }

    #[test]
    fn a_render_past_its_deadline_is_reported_and_yields_nothing() {
        // A zero deadline alone races a fast render (kiln's own templates can finish before the wait
        // begins), so the render is also made slow within its fuel: each step copies 2 MiB, about a
        // second in all, far beyond any scheduling delay of the waiting thread.
        let slow =
            "{% set s = 'x' * 1048576 %}{% for i in range(2000) %}{% set t = s ~ s %}{% endfor %}";
        match render_with(&overriding("cluster-facts.yaml.j2", slow), Duration::ZERO) {
            e @ RenderError::Deadline { .. } => {
                assert!(e.to_string().contains("nothing is committed"), "{e}")
            }
            other => panic!("expected a deadline, got {other}"),
        }
        assert_eq!(running_template(0), "(compiling the templates)");
        assert_eq!(running_template(1), TEMPLATES[0].0);
    }

    #[test]
    fn output_past_the_cap_is_refused() {
        use std::io::Write;
        let mut sink = CappedOutput::new(4);
        assert!(sink.write_all(b"abcd").is_ok());
        assert!(sink.write_all(b"e").is_err());
        assert!(sink.overflowed());
    }
}
