//! The latest Talos patch of each minor kiln knows: what an upgrade passes through on its way, one
//! minor at a time (DESIGN §4: "through that minor's latest patch"). Kept as data in one place, beside
//! `compat`'s Kubernetes ranges, so a new Talos patch is one line here.
//!
//! Source: the release tags of siderolabs/talos (`git tag` of the repository as fetched on
//! 2026-12-04, newest commit 2026-08-21): v1.11.6, v1.12.11 and v1.13.9 are the highest tags of their
//! minors (v1.14 has release candidates only, so kiln does not upgrade to it yet).

use super::Version;

const LATEST: [Version; 3] = [
    Version::new(1, 11, 6),
    Version::new(1, 12, 11),
    Version::new(1, 13, 9),
];

/// The latest patch of `minor` (`(1, 12)` → v1.12.11), or `None` for a minor kiln does not know.
pub fn latest_patch(minor: (u32, u32)) -> Option<Version> {
    LATEST.iter().copied().find(|v| v.minor_line() == minor)
}

/// Every minor kiln knows, oldest first.
pub fn known_minors() -> impl Iterator<Item = (u32, u32)> {
    LATEST.iter().map(|v| v.minor_line())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_latest_patch_per_minor_in_order() {
        assert_eq!(latest_patch((1, 12)), Some(Version::new(1, 12, 11)));
        assert_eq!(latest_patch((1, 13)), Some(Version::new(1, 13, 9)));
        assert_eq!(latest_patch((1, 10)), None);
        let minors: Vec<_> = known_minors().collect();
        let mut sorted = minors.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(minors, sorted);
        // Every minor kiln can upgrade through also has a Kubernetes range.
        for m in minors {
            let v = latest_patch(m).unwrap();
            assert!(super::super::compat::kubernetes_range(v).is_some(), "{v}");
        }
    }
}
