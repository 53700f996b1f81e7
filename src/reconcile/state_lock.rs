//! The one-process rule of DESIGN.md §7: every command that acts on a `state_dir` (`run`, `run
//! --once`, `demo`, and later `rotate`, `backup now`, `restore` when no daemon answers) holds an
//! exclusive lock on `state_dir/kiln.lock` for its whole life. Two kilns on one folder would race
//! `records.json` and delete each other's Git lock files as stale.
//!
//! The lock is `flock(2)` (through `File::try_lock`): the kernel drops it when the process ends, even
//! on `kill -9`, so a crash never leaves a folder locked. The file's content only says who holds it.

use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

use super::state_file::now_rfc3339;

/// The lock file's name inside `state_dir`.
pub const LOCK_FILE: &str = "kiln.lock";

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error(
        "{path} is held by another kiln process ({holder}): only one kiln may act on a state_dir; \
         stop that process, or point this one at another state_dir"
    )]
    Held { path: PathBuf, holder: String },
    #[error("cannot lock {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Held while alive; dropping it (or the process ending) releases the folder.
#[derive(Debug)]
pub struct StateLock {
    _file: std::fs::File,
    path: PathBuf,
}

impl StateLock {
    /// Takes the lock on `state_dir` (created if missing) for `command`, which is written into the
    /// lock file with this process's id for whoever finds the folder taken. Never waits.
    pub fn acquire(state_dir: &Path, command: &str) -> Result<Self, LockError> {
        let path = state_dir.join(LOCK_FILE);
        let io = |source| LockError::Io {
            path: path.clone(),
            source,
        };
        std::fs::create_dir_all(state_dir).map_err(io)?;
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io)?;
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                let mut said = String::new();
                let _ = file.read_to_string(&mut said);
                return Err(LockError::Held {
                    holder: describe_holder(&said),
                    path,
                });
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(io(e)),
        }
        let stamp = format!(
            "pid {}\ncommand {command}\nsince {}\n",
            std::process::id(),
            now_rfc3339()
        );
        file.set_len(0).map_err(io)?;
        file.rewind().map_err(io)?;
        file.write_all(stamp.as_bytes()).map_err(io)?;
        file.sync_all().map_err(io)?;
        Ok(Self { _file: file, path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// `pid 123, kiln run --config …, since …` from the lock file's lines. The holder writes them right
/// after locking, so a process that looks in between finds the file still empty.
fn describe_holder(said: &str) -> String {
    let field = |name: &str| {
        said.lines()
            .find_map(|l| l.strip_prefix(name).map(|v| v.trim().to_owned()))
    };
    match (field("pid "), field("command "), field("since ")) {
        (Some(pid), Some(command), Some(since)) => {
            format!("pid {pid}, `{command}`, since {since}")
        }
        (Some(pid), _, _) => format!("pid {pid}"),
        _ => "it has not written its pid yet".to_owned(),
    }
}

/// The command line of this process, for the lock file. kiln takes no secret as an argument (every
/// secret is a `*_file` key), so the arguments are safe to write down.
pub fn this_command() -> String {
    std::env::args().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_on_the_same_folder_names_the_holder_and_a_released_one_is_taken_again() {
        let dir = tempfile::tempdir().unwrap();
        let first = StateLock::acquire(dir.path(), "kiln run --config a.toml").unwrap();
        let err = StateLock::acquire(dir.path(), "kiln run --once").unwrap_err();
        let said = err.to_string();
        assert!(
            said.contains(&format!("pid {}", std::process::id()))
                && said.contains("kiln run --config a.toml"),
            "{said}"
        );
        drop(first);
        let again = StateLock::acquire(dir.path(), "kiln run --once").unwrap();
        let text = std::fs::read_to_string(again.path()).unwrap();
        assert!(text.contains("command kiln run --once"), "{text}");
        assert!(
            !text.contains("a.toml"),
            "the old holder's line stayed: {text}"
        );
    }

    #[test]
    fn a_holder_that_has_not_written_yet_is_still_reported() {
        assert_eq!(describe_holder(""), "it has not written its pid yet");
        assert_eq!(
            describe_holder("pid 7\ncommand kiln run\nsince 2026-01-01T00:00:00Z\n"),
            "pid 7, `kiln run`, since 2026-01-01T00:00:00Z"
        );
    }
}
