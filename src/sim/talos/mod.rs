//! The Talos simulator (filled in by the Talos issue).
