//! Strong types for the intent file: each one refuses what Proxmox, Talos or Kubernetes would refuse,
//! so code past deserialisation never re-checks a string.

use std::borrow::Cow;
use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Implements serde and `FromStr` round-tripping through `Display`/`FromStr`.
macro_rules! string_serde {
    ($ty:ty) => {
        impl Serialize for $ty {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }
        impl<'de> Deserialize<'de> for $ty {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let raw = String::deserialize(d)?;
                raw.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}

/// A cluster name: a DNS-1123 label of at most 50 characters (it prefixes VM names such as
/// `{name}-cp-1` and Vault paths, so it is shorter than the 63 a label allows).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ClusterName(String);

pub const CLUSTER_NAME_MAX: usize = 50;

impl ClusterName {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for ClusterName {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if s.is_empty() {
            return Err("must not be empty".into());
        }
        if s.len() > CLUSTER_NAME_MAX {
            return Err(format!(
                "`{s}` is {} characters long; at most {CLUSTER_NAME_MAX} are allowed",
                s.len()
            ));
        }
        let ok_chars = s
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        let ok_ends = !s.starts_with('-') && !s.ends_with('-');
        if !ok_chars || !ok_ends {
            return Err(format!(
                "`{s}` is not a DNS-1123 label: use lowercase letters, digits and `-`, starting and ending with a letter or digit"
            ));
        }
        Ok(Self(s.to_owned()))
    }
}

// Read-only views of the validated text: a `ClusterName` is usable wherever a `&str` is read
// (map lookups by `&str`, `observe`, paths) without handing out a way to change it.
impl std::ops::Deref for ClusterName {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl AsRef<str> for ClusterName {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

// Consistent with `Ord`/`Eq`, which compare the inner string.
impl std::borrow::Borrow<str> for ClusterName {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ClusterName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}
string_serde!(ClusterName);

impl JsonSchema for ClusterName {
    fn schema_name() -> Cow<'static, str> {
        "ClusterName".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "string",
            "description": "DNS-1123 label of at most 50 characters, equal to the file's stem",
            "pattern": "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$",
            "minLength": 1,
            "maxLength": CLUSTER_NAME_MAX,
        })
    }
}

/// A Proxmox VMID. PVE accepts 100..=999999999.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct Vmid(u32);

impl Vmid {
    pub const MIN: u32 = 100;
    pub const MAX: u32 = 999_999_999;

    pub fn new(v: u64) -> Result<Self, String> {
        if (Self::MIN as u64..=Self::MAX as u64).contains(&v) {
            Ok(Self(v as u32))
        } else {
            Err(format!(
                "VMID {v} is outside the range Proxmox accepts ({}..={})",
                Self::MIN,
                Self::MAX
            ))
        }
    }
    pub fn get(self) -> u32 {
        self.0
    }
}

impl fmt::Display for Vmid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl FromStr for Vmid {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let v: u64 = s.parse().map_err(|_| format!("`{s}` is not a VMID"))?;
        Self::new(v)
    }
}

impl<'de> Deserialize<'de> for Vmid {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = u64::deserialize(d)?;
        Self::new(v).map_err(serde::de::Error::custom)
    }
}

impl JsonSchema for Vmid {
    fn schema_name() -> Cow<'static, str> {
        "Vmid".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "integer",
            "minimum": Vmid::MIN,
            "maximum": Vmid::MAX,
        })
    }
}

/// An Ethernet MAC address, written `AA:BB:CC:DD:EE:FF`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MacAddr(pub [u8; 6]);

impl MacAddr {
    /// Unicast: the low bit of the first octet is clear (a multicast MAC cannot be a NIC's).
    pub fn is_unicast(self) -> bool {
        self.0[0] & 0x01 == 0
    }
    pub fn is_locally_administered(self) -> bool {
        self.0[0] & 0x02 != 0
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        write!(
            f,
            "{:02X}:{:02X}:{:02X}:{:02X}:{:02X}:{:02X}",
            b[0], b[1], b[2], b[3], b[4], b[5]
        )
    }
}

impl FromStr for MacAddr {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad =
            || format!("`{s}` is not a MAC address; write six hex pairs like BC:24:11:00:00:01");
        let parts: Vec<&str> = s.split(':').collect();
        if parts.len() != 6 {
            return Err(bad());
        }
        let mut out = [0u8; 6];
        for (i, p) in parts.iter().enumerate() {
            if p.len() != 2 {
                return Err(bad());
            }
            out[i] = u8::from_str_radix(p, 16).map_err(|_| bad())?;
        }
        Ok(Self(out))
    }
}
string_serde!(MacAddr);

impl JsonSchema for MacAddr {
    fn schema_name() -> Cow<'static, str> {
        "MacAddr".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "string",
            "pattern": "^[0-9A-Fa-f]{2}(:[0-9A-Fa-f]{2}){5}$",
        })
    }
}

/// A release version written `vMAJOR.MINOR.PATCH` (Talos and Kubernetes tags).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Version {
    pub major: u32,
    pub minor: u32,
    pub patch: u32,
}

impl Version {
    pub const fn new(major: u32, minor: u32, patch: u32) -> Self {
        Self {
            major,
            minor,
            patch,
        }
    }
    /// `(major, minor)`, what config contracts and upgrade steps key on.
    pub fn minor_line(self) -> (u32, u32) {
        (self.major, self.minor)
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "v{}.{}.{}", self.major, self.minor, self.patch)
    }
}

impl FromStr for Version {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad =
            || format!("`{s}` is not a version; write it as vMAJOR.MINOR.PATCH, e.g. v1.13.9");
        let rest = s.strip_prefix('v').ok_or_else(bad)?;
        let nums: Vec<&str> = rest.split('.').collect();
        if nums.len() != 3 {
            return Err(bad());
        }
        let n = |p: &str| -> Result<u32, String> {
            if p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()) {
                return Err(bad());
            }
            p.parse().map_err(|_| bad())
        };
        Ok(Self::new(n(nums[0])?, n(nums[1])?, n(nums[2])?))
    }
}
string_serde!(Version);

impl JsonSchema for Version {
    fn schema_name() -> Cow<'static, str> {
        "Version".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "string",
            "pattern": "^v[0-9]+\\.[0-9]+\\.[0-9]+$",
        })
    }
}

/// An inclusive IPv4 range `first-last` (the metallb pool).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Ipv4Range {
    pub first: Ipv4Addr,
    pub last: Ipv4Addr,
}

impl Ipv4Range {
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        self.first <= ip && ip <= self.last
    }
}

impl fmt::Display for Ipv4Range {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.first, self.last)
    }
}

impl FromStr for Ipv4Range {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || {
            format!(
                "`{s}` is not an address range; write it as FIRST-LAST, e.g. 192.168.2.200-192.168.2.220"
            )
        };
        let (a, b) = s.split_once('-').ok_or_else(bad)?;
        let first: Ipv4Addr = a.trim().parse().map_err(|_| bad())?;
        let last: Ipv4Addr = b.trim().parse().map_err(|_| bad())?;
        if first > last {
            return Err(format!("`{s}`: the first address is after the last"));
        }
        Ok(Self { first, last })
    }
}
string_serde!(Ipv4Range);

impl JsonSchema for Ipv4Range {
    fn schema_name() -> Cow<'static, str> {
        "Ipv4Range".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "string",
            "pattern": "^[0-9]{1,3}(\\.[0-9]{1,3}){3}-[0-9]{1,3}(\\.[0-9]{1,3}){3}$",
        })
    }
}

/// A duration written the humantime way (`6h`, `30s`, `1d 12h`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct HumanDuration(pub std::time::Duration);

impl fmt::Display for HumanDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", humantime::format_duration(self.0))
    }
}

impl FromStr for HumanDuration {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        humantime::parse_duration(s)
            .map(Self)
            .map_err(|e| format!("`{s}` is not a duration ({e}); write e.g. 30s, 10m, 6h"))
    }
}
string_serde!(HumanDuration);

impl JsonSchema for HumanDuration {
    fn schema_name() -> Cow<'static, str> {
        "HumanDuration".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "string",
            "description": "a duration such as 30s, 10m, 6h",
            "pattern": "^([0-9]+ *[a-zA-Zµ]+ *)+$",
        })
    }
}
