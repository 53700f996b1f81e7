//! Log lines on stderr for every command.

#[derive(Clone, Copy, Debug, Default, clap::ValueEnum)]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// Logs on stderr: human text by default (no timestamps or colours under systemd, whose journal
/// stamps every line), or one JSON object per line with the span path (cluster, action).
pub fn init_logging(format: LogFormat) {
    init_logging_at(format, "info")
}

pub fn init_logging_at(format: LogFormat, default_level: &str) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("KILN_LOG")
        .or_else(|_| EnvFilter::try_from_default_env())
        .unwrap_or_else(|_| {
            // vaultrs and rustify log every expected 404 ("no bundle yet") as an error; kiln reports
            // what matters through its own errors.
            EnvFilter::new(format!("{default_level},vaultrs=off,rustify=off"))
        });
    let journald = std::env::var_os("JOURNAL_STREAM").is_some();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Json => builder
            .json()
            .with_current_span(true)
            .with_span_list(true)
            .try_init(),
        LogFormat::Text if journald => builder.without_time().with_ansi(false).try_init(),
        LogFormat::Text => builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .try_init(),
    };
}
