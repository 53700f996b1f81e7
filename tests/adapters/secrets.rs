//! The secret store against real parts: a real OpenBao dev server (one per test, killed on drop) and
//! the file store on a temporary folder. The behavioural suite in `secrets/behaviour.rs` runs against
//! both; the rest covers what only one backend has (auth, sealing, mounts, file modes).

#[path = "secrets/bao.rs"]
mod bao;
#[path = "secrets/behaviour.rs"]
mod behaviour;
#[path = "secrets/file_store.rs"]
mod file_store;
#[path = "secrets/parse_errors.rs"]
mod parse_errors;
#[path = "secrets/vault_auth.rs"]
mod vault_auth;
#[path = "secrets/vault_outage.rs"]
mod vault_outage;
#[path = "secrets/vault_redaction.rs"]
mod vault_redaction;
#[path = "secrets/vault_store.rs"]
mod vault_store;
