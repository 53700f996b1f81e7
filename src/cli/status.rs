//! `kiln status [NAME]`: what the daemon last reported.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;

use kiln::config::Config;
use kiln::reconcile::status::{ClusterStatus, StatusBook};

use super::Format;

#[derive(clap::Args)]
pub struct Args {
    name: Option<String>,
    #[arg(long, value_name = "FILE", default_value = kiln::config::DEFAULT_CONFIG_PATH)]
    config: PathBuf,
    #[arg(long, value_enum, default_value_t = Format::Text)]
    format: Format,
}

pub fn exec(args: &Args) -> anyhow::Result<ExitCode> {
    status(
        &args.config,
        args.name.as_deref(),
        matches!(args.format, Format::Json),
    )
}

pub fn status(config_path: &Path, name: Option<&str>, json: bool) -> anyhow::Result<ExitCode> {
    let config = Config::load(config_path)?;
    let now = time::OffsetDateTime::now_utc();
    let from_file = || -> anyhow::Result<StatusBook> {
        StatusBook::load(&config.state_dir)
            .with_context(|| format!("reading {}", config.state_dir.join("status.json").display()))
    };
    // The daemon knows more than its last saved file (clusters committed but not reconciled yet),
    // so it is asked first when it serves an API; a daemon that does not answer is said to be so
    // and the file is read instead.
    let book = match &config.api.token_file {
        None => from_file()?,
        Some(token_file) => match ask_daemon(&config, token_file, name) {
            Ok(Some(book)) => book,
            Ok(None) => {
                eprintln!(
                    "no cluster {} in the repository the daemon serves, nor in its status",
                    name.unwrap_or_default()
                );
                return Ok(ExitCode::FAILURE);
            }
            Err(why) => {
                eprintln!(
                    "kiln: the daemon's API at {} did not answer ({why:#}); showing {}, the status it last saved",
                    api_base(config.api.listen),
                    config.state_dir.join("status.json").display()
                );
                from_file()?
            }
        },
    };
    // Time to expiry is worked out now: the daemon's last word may be hours old.
    let book = book.with_time_left(now);
    let Some(name) = name else {
        if json {
            println!("{}", serde_json::to_string_pretty(&book)?);
        } else {
            print!("{}", book.table());
            if let Some(ha) = &config.ha {
                println!("\nleader:   {}", super::ports::lease_holder(ha));
            }
            let credentials = book.credentials_table(now);
            if !credentials.is_empty() {
                print!("\ncredentials:\n{credentials}");
            }
        }
        return Ok(ExitCode::SUCCESS);
    };
    let Some(s) = book.clusters.get(name) else {
        eprintln!(
            "no status for cluster {name} (is it in the repository, and has kiln run since?)"
        );
        return Ok(ExitCode::FAILURE);
    };
    if json {
        println!("{}", serde_json::to_string_pretty(s)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!("cluster:  {}", s.name);
    println!("phase:    {}", s.phase);
    println!(
        "applied:  {}",
        s.last_applied_revision.as_deref().unwrap_or("-")
    );
    if let Some(e) = &s.last_error {
        println!("error:    {e}");
    }
    if let Some(r) = s.retry_at {
        println!("retry at: {}", kiln::reconcile::state_file::rfc3339(r));
    }
    for (which, c) in &s.credentials {
        println!("{which:<12}{}", c.describe(now));
    }
    for c in &s.conditions {
        println!(
            "condition {} = {} ({}): {}",
            c.kind, c.status, c.reason, c.message
        );
    }
    println!(
        "{:<24} {:>9}  {:<15} {:<13} {:<9} {:<13} {:<10} KUBERNETES",
        "NODE", "VMID", "IP", "ROLE", "VM", "TALOS", "VERSION"
    );
    for n in &s.nodes {
        println!(
            "{:<24} {:>9}  {:<15} {:<13} {:<9} {:<13} {:<10} {}",
            n.name,
            n.vmid,
            n.ip,
            n.role,
            n.vm_state,
            n.talos_stage,
            n.talos_version.as_deref().unwrap_or("-"),
            n.kubernetes_version.as_deref().unwrap_or("-")
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Where the daemon's API answers: `api.listen`, with an unspecified address (`0.0.0.0`, `[::]`)
/// reached over loopback.
fn api_base(listen: SocketAddr) -> String {
    let ip = match listen.ip() {
        IpAddr::V4(v4) if v4.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(v6) if v6.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    format!("http://{}", SocketAddr::new(ip, listen.port()))
}

/// The daemon's status over its API: every cluster, or the one named (`None` when the daemon
/// knows no such cluster).
fn ask_daemon(
    config: &Config,
    token_file: &Path,
    name: Option<&str>,
) -> anyhow::Result<Option<StatusBook>> {
    // A name that cannot be a cluster's is not sent: it would be a path of its own in the URL.
    if name.is_some_and(|n| n.parse::<kiln::spec::ClusterName>().is_err()) {
        return Ok(None);
    }
    let token = kiln::config::read_secret_file("api.token_file", token_file)?;
    let base = api_base(config.api.listen);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async move {
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(2))
            .timeout(Duration::from_secs(10))
            .build()
            .context("HTTP client")?;
        let url = match name {
            Some(n) => format!("{base}/api/v1/clusters/{n}/status"),
            None => format!("{base}/api/v1/clusters"),
        };
        let response = client
            .get(&url)
            .bearer_auth(token.expose())
            .send()
            .await
            .map_err(|e| anyhow::anyhow!("{}", e.without_url()))?;
        let code = response.status();
        if code == reqwest::StatusCode::NOT_FOUND && name.is_some() {
            return Ok(None);
        }
        anyhow::ensure!(code.is_success(), "it answered {code}");
        let mut book = StatusBook::default();
        if name.is_some() {
            let s: ClusterStatus = response.json().await.context("reading its answer")?;
            book.clusters.insert(s.name.clone(), s);
        } else {
            #[derive(serde::Deserialize)]
            struct List {
                clusters: Vec<ClusterStatus>,
            }
            let list: List = response.json().await.context("reading its answer")?;
            book.clusters = list
                .clusters
                .into_iter()
                .map(|s| (s.name.clone(), s))
                .collect();
        }
        Ok(Some(book))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unspecified_listen_address_is_reached_over_loopback() {
        assert_eq!(
            api_base("0.0.0.0:8080".parse().unwrap()),
            "http://127.0.0.1:8080"
        );
        assert_eq!(api_base("[::]:9000".parse().unwrap()), "http://[::1]:9000");
        assert_eq!(
            api_base("10.1.2.3:8080".parse().unwrap()),
            "http://10.1.2.3:8080"
        );
    }
}
