//! One module per `kiln` command (cargo's `commands/` layout): each has its clap `Args` and an
//! `exec`. This is the binary's side: like `main.rs`, it reports with `anyhow` and prints; the
//! library it calls returns typed errors (see ARCHITECTURE.md, "CLI").

pub mod assets;
pub mod backup;
pub mod demo;
pub mod logging;
pub mod plan;
pub mod ports;
pub mod render;
pub mod restore;
pub mod rotate;
pub mod run;
pub mod schema;
pub mod sim;
pub mod status;
pub mod validate;

/// `--format` of `status` and `plan`.
#[derive(Clone, Copy, clap::ValueEnum)]
pub enum Format {
    Text,
    Json,
}
