//! When a stored kubeconfig or talosconfig must be replaced (DESIGN.md §5): Talos issues them for a
//! year, kiln replaces them once a third of that life remains, and a no-op cycle never rewrites one.
//! Pure: the reconciler passes the path's custom metadata and the clock.

use std::time::Duration;

use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use super::layout::meta_keys;
use super::types::CustomMetadata;

/// What Talos gives admin kubeconfigs and talosconfigs.
pub const CREDENTIAL_LIFETIME: Duration = Duration::from_secs(365 * 24 * 3600);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rotation {
    /// Keep it; `remaining` is the time-to-expiry metric.
    NotDue { remaining: Duration },
    /// A third of the life or less remains (or it already expired).
    Due { remaining: Duration },
    /// No `expires-at`: written by something else, or before the marker existed. Replace it once, so
    /// it gets one; after that it is never due until its time.
    Unknown,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("custom metadata `expires-at` = `{value}` is not an RFC 3339 time")]
pub struct BadExpiry {
    pub value: String,
}

/// Whether the credential whose metadata this is should be replaced at `now`.
pub fn rotation(
    metadata: &CustomMetadata,
    lifetime: Duration,
    now: OffsetDateTime,
) -> Result<Rotation, BadExpiry> {
    let Some(raw) = metadata.get(meta_keys::EXPIRES_AT) else {
        return Ok(Rotation::Unknown);
    };
    let expires =
        OffsetDateTime::parse(raw, &Rfc3339).map_err(|_| BadExpiry { value: raw.clone() })?;
    let remaining = Duration::try_from(expires - now).unwrap_or(Duration::ZERO);
    Ok(if remaining <= lifetime / 3 {
        Rotation::Due { remaining }
    } else {
        Rotation::NotDue { remaining }
    })
}

/// The `expires-at` value for a credential issued now.
pub fn expires_at(now: OffsetDateTime, lifetime: Duration) -> String {
    (now + lifetime)
        .format(&Rfc3339)
        .expect("an in-range UTC time formats as RFC 3339")
}

#[cfg(test)]
mod tests {
    use time::macros::datetime;

    use super::*;

    fn meta(v: &str) -> CustomMetadata {
        CustomMetadata::from([(meta_keys::EXPIRES_AT.to_owned(), v.to_owned())])
    }

    #[test]
    fn due_once_a_third_of_the_life_remains() {
        let issued = datetime!(2026-01-01 00:00 UTC);
        let m = meta(&expires_at(issued, CREDENTIAL_LIFETIME));
        let day = Duration::from_secs(24 * 3600);
        let at = |days: u64| issued + day * days as u32;
        assert!(matches!(
            rotation(&m, CREDENTIAL_LIFETIME, at(200)).unwrap(),
            Rotation::NotDue { .. }
        ));
        match rotation(&m, CREDENTIAL_LIFETIME, at(244)).unwrap() {
            Rotation::Due { remaining } => assert_eq!(remaining, day * 121),
            other => panic!("{other:?}"),
        }
        assert_eq!(
            rotation(&m, CREDENTIAL_LIFETIME, at(400)).unwrap(),
            Rotation::Due {
                remaining: Duration::ZERO
            }
        );
    }

    #[test]
    fn missing_or_bad_expiry() {
        let now = datetime!(2026-01-01 00:00 UTC);
        assert_eq!(
            rotation(&CustomMetadata::new(), CREDENTIAL_LIFETIME, now).unwrap(),
            Rotation::Unknown
        );
        assert!(rotation(&meta("next year"), CREDENTIAL_LIFETIME, now).is_err());
    }
}
