//! Filled in by its issue; see ARCHITECTURE.md.
