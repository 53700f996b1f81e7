//! The Git port the reconciler depends on (DESIGN.md §1), so the engine runs the same against
//! `GitSource` and a test double.

use std::future::Future;

use gix::ObjectId;

use super::{
    CommitError, GitError, GitSource, IntentEdit, PollOutcome, PublishOutcome, Rendered, Snapshot,
};

pub trait GitPort: Send + Sync {
    /// Lists the remote's refs and fetches only if the branch moved.
    fn poll(&self) -> impl Future<Output = Result<PollOutcome, GitError>> + Send;
    /// The last revision fetched successfully (kept while the remote is unreachable).
    fn current(&self) -> impl Future<Output = Option<ObjectId>> + Send;
    /// The intent at `rev`.
    fn snapshot(&self, rev: ObjectId) -> impl Future<Output = Result<Snapshot, GitError>> + Send;
    /// Commits and pushes the generated files rendered for the current tip.
    fn publish<F, E>(
        &self,
        render: F,
    ) -> impl Future<Output = Result<PublishOutcome, CommitError<E>>> + Send
    where
        F: FnMut(&Snapshot) -> Result<Rendered, E> + Send,
        E: Send;
    /// Commits and pushes intent edits (the HTTP API), to the branch or a review branch.
    fn write_intent<F, E>(
        &self,
        to_branch: Option<&str>,
        message: &str,
        edit: F,
    ) -> impl Future<Output = Result<PublishOutcome, CommitError<E>>> + Send
    where
        F: FnMut(&Snapshot) -> Result<Vec<IntentEdit>, E> + Send,
        E: Send;
}

impl GitPort for GitSource {
    fn poll(&self) -> impl Future<Output = Result<PollOutcome, GitError>> + Send {
        GitSource::poll(self)
    }
    fn current(&self) -> impl Future<Output = Option<ObjectId>> + Send {
        GitSource::current(self)
    }
    fn snapshot(&self, rev: ObjectId) -> impl Future<Output = Result<Snapshot, GitError>> + Send {
        GitSource::snapshot(self, rev)
    }
    fn publish<F, E>(
        &self,
        render: F,
    ) -> impl Future<Output = Result<PublishOutcome, CommitError<E>>> + Send
    where
        F: FnMut(&Snapshot) -> Result<Rendered, E> + Send,
        E: Send,
    {
        GitSource::publish(self, render)
    }
    fn write_intent<F, E>(
        &self,
        to_branch: Option<&str>,
        message: &str,
        edit: F,
    ) -> impl Future<Output = Result<PublishOutcome, CommitError<E>>> + Send
    where
        F: FnMut(&Snapshot) -> Result<Vec<IntentEdit>, E> + Send,
        E: Send,
    {
        GitSource::write_intent(self, to_branch, message, edit)
    }
}
