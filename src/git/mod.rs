//! The Git source (DESIGN.md §6–§8): a cache clone under `state_dir/repo`, polled by listing the
//! remote's refs (no transfer when the branch did not move); intent read at a revision straight from
//! the object database; generated files committed under `output_dir` only and pushed fast-forward.
//!
//! Decisions worth knowing:
//! - The cache clone is a full (not shallow) bare clone: after the first fetch every poll transfers
//!   only new objects, and the `Kiln-Source` walk needs the history. A shallow boundary is still
//!   handled (the boundary commit is named).
//! - Fetch uses gix over `file://`, local paths, `ssh://` and `git://`. kiln's gix build has no
//!   HTTP transport (it would add a second TLS and HTTP stack), so `http(s)://` remotes are fetched
//!   with `git fetch`, which also transfers nothing when the branch is unchanged.
//! - `PollOutcome::Moved` says whether intent changed: a tip that moved only by commits outside
//!   `clusters_dir` and `templates/` (kiln's own) starts no work.

mod commit;
mod error;
mod local;
mod remote;
mod snapshot;
mod source;
mod trigger;

pub use commit::{Author, Generated, IntentEdit, message};
pub use error::{CommitError, GitError, redact_url};
pub use gix::ObjectId;
pub use local::{read_revision, read_work_tree};
pub use remote::{FetchReport, Remote};
pub use snapshot::{ClusterFile, IntentRevision, Snapshot, TEMPLATES_DIR};
pub use source::{GitSource, PollOutcome, PublishOutcome, PushGate, Rendered, RetryPolicy};
pub use trigger::{Trigger, Wake, jittered, local_repo_path, watch_if_local, watch_local};
