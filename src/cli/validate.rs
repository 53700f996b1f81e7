//! `kiln validate PATH…`: the intent files checked together, as the daemon reads them.

use std::path::PathBuf;
use std::process::ExitCode;

#[derive(clap::Args)]
pub struct Args {
    #[arg(required = true, value_name = "PATH")]
    paths: Vec<PathBuf>,
}

pub fn exec(args: &Args) -> anyhow::Result<ExitCode> {
    validate(&args.paths)
}

fn validate(paths: &[PathBuf]) -> anyhow::Result<ExitCode> {
    let (found, outcome) = kiln::spec::load_local(paths)?;
    if found == 0 {
        eprintln!("no intent files (*.yaml) found in {paths:?}");
        return Ok(ExitCode::FAILURE);
    }
    for w in &outcome.warnings {
        eprintln!("{w}");
    }
    for e in outcome.errors() {
        eprintln!("{e}");
    }
    let bad = outcome.invalid.len();
    if bad == 0 {
        println!("{} cluster file(s) valid", outcome.clusters.len());
        Ok(ExitCode::SUCCESS)
    } else {
        eprintln!(
            "{bad} of {} cluster file(s) invalid",
            outcome.clusters.len() + bad
        );
        Ok(ExitCode::FAILURE)
    }
}
