//! `kiln schema`: the JSON Schema of the intent file.

use std::process::ExitCode;

pub fn exec() -> anyhow::Result<ExitCode> {
    let schema = kiln::spec::json_schema();
    println!("{}", serde_json::to_string_pretty(&schema)?);
    Ok(ExitCode::SUCCESS)
}
