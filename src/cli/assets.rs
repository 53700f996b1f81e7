//! `kiln generate-assets DIR` (hidden): the Debian package's shell completions and man pages, made
//! from the same clap tree the binary parses with, so they never describe another version's flags.
//! Hidden because operators get them from the package; the packaging (CI's `cargo deb`) calls it.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap_complete::Shell;

#[derive(clap::Args)]
pub struct Args {
    /// Folder to write kiln.bash, _kiln (zsh), kiln.fish and man/kiln*.1 into (created if missing).
    dir: PathBuf,
}

pub fn exec(args: &Args, mut command: clap::Command) -> anyhow::Result<ExitCode> {
    write_all(&args.dir, &mut command)?;
    Ok(ExitCode::SUCCESS)
}

fn write_all(dir: &Path, command: &mut clap::Command) -> anyhow::Result<()> {
    let man = dir.join("man");
    std::fs::create_dir_all(&man).with_context(|| format!("creating {}", man.display()))?;
    // Taken before the completions build the tree (which adds clap's `help` subcommands).
    let for_man = without_help_pages(command.clone());
    for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
        let path = clap_complete::generate_to(shell, command, "kiln", dir)
            .with_context(|| format!("writing the {shell} completions into {}", dir.display()))?;
        println!("{}", path.display());
    }
    // One page per command (kiln.1, kiln-run.1, …), as `man kiln-run` is what people type.
    clap_mangen::generate_to(for_man, &man)
        .with_context(|| format!("writing the man pages into {}", man.display()))?;
    let mut pages: Vec<_> = std::fs::read_dir(&man)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    pages.sort();
    for page in pages {
        println!("{}", page.display());
    }
    Ok(())
}

/// clap's implicit `help` subcommand would get a page of its own under every command.
fn without_help_pages(command: clap::Command) -> clap::Command {
    command
        .disable_help_subcommand(true)
        .mut_subcommands(without_help_pages)
}
