//! kiln's own files in the state folder (`status.json`, `records.json`): JSON, read as empty when
//! absent, written to a temporary file that is synced and renamed, so a crash at any moment leaves
//! the old or the new file and a reader never sees half of one.

use std::io::{self, Write};
use std::path::Path;

use serde::Serialize;
use serde::de::DeserializeOwned;

pub fn load<T: DeserializeOwned + Default>(state_dir: &Path, file: &str) -> io::Result<T> {
    match std::fs::read(state_dir.join(file)) {
        Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{}: {e}", state_dir.join(file).display()),
            )
        }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(T::default()),
        Err(e) => Err(e),
    }
}

pub fn save<T: Serialize>(state_dir: &Path, file: &str, value: &T) -> io::Result<()> {
    std::fs::create_dir_all(state_dir)?;
    let tmp = state_dir.join(format!("{file}.tmp"));
    let bytes = serde_json::to_vec_pretty(value).map_err(io::Error::other)?;
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(&bytes)?;
    f.sync_all()?;
    std::fs::rename(tmp, state_dir.join(file))
}

/// Now, as RFC 3339 (what status and records store).
pub fn now_rfc3339() -> String {
    rfc3339(time::OffsetDateTime::now_utc())
}

pub fn rfc3339(t: time::OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| "1970-01-01T00:00:00Z".into())
}
