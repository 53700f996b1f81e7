//! `kiln status [NAME]`: what the daemon last reported.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;

use kiln::config::Config;

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
    // Time to expiry is worked out now: the daemon's last word may be hours old.
    let book = kiln::reconcile::status::StatusBook::load(&config.state_dir)
        .with_context(|| format!("reading {}", config.state_dir.join("status.json").display()))?
        .with_time_left(now);
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
    if let Some(r) = &s.retry_at {
        println!("retry at: {r}");
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
