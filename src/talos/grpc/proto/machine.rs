//! Package `machine` (`api/machine/machine.proto`): the MachineService messages kiln uses.

use super::common::Metadata;

/// `ApplyConfigurationRequest.Mode`. The proto3 zero value is the deprecated REBOOT, which v1.14+ rejects
/// on configured nodes, so kiln always sends a mode explicitly.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum ApplyMode {
    Reboot = 0,
    Auto = 1,
    NoReboot = 2,
    Staged = 3,
    Try = 4,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct ApplyConfigurationRequest {
    #[prost(bytes = "vec", tag = "1")]
    pub data: Vec<u8>,
    #[prost(enumeration = "ApplyMode", tag = "4")]
    pub mode: i32,
    #[prost(bool, tag = "5")]
    pub dry_run: bool,
    #[prost(message, optional, tag = "6")]
    pub try_mode_timeout: Option<prost_types::Duration>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct ApplyConfiguration {
    #[prost(message, optional, tag = "1")]
    pub metadata: Option<Metadata>,
    #[prost(string, repeated, tag = "2")]
    pub warnings: Vec<String>,
    #[prost(enumeration = "ApplyMode", tag = "3")]
    pub mode: i32,
    #[prost(string, tag = "4")]
    pub mode_details: String,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct ApplyConfigurationResponse {
    #[prost(message, repeated, tag = "1")]
    pub messages: Vec<ApplyConfiguration>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct BootstrapRequest {
    #[prost(bool, tag = "1")]
    pub recover_etcd: bool,
    #[prost(bool, tag = "2")]
    pub recover_skip_hash_check: bool,
}

/// The reply items that carry nothing but the envelope metadata (Bootstrap, EtcdRecover,
/// EtcdRemoveMemberByID) share one shape on the wire.
#[derive(Clone, PartialEq, prost::Message)]
pub struct MetadataOnly {
    #[prost(message, optional, tag = "1")]
    pub metadata: Option<Metadata>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct MetadataOnlyResponse {
    #[prost(message, repeated, tag = "1")]
    pub messages: Vec<MetadataOnly>,
}

pub type BootstrapResponse = MetadataOnlyResponse;
pub type EtcdRecoverResponse = MetadataOnlyResponse;
pub type EtcdRemoveMemberByIdResponse = MetadataOnlyResponse;

#[derive(Clone, PartialEq, prost::Message)]
pub struct VersionInfo {
    #[prost(string, tag = "1")]
    pub tag: String,
    #[prost(string, tag = "2")]
    pub sha: String,
    #[prost(string, tag = "3")]
    pub built: String,
    #[prost(string, tag = "4")]
    pub go_version: String,
    #[prost(string, tag = "5")]
    pub os: String,
    #[prost(string, tag = "6")]
    pub arch: String,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct PlatformInfo {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(string, tag = "2")]
    pub mode: String,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct FeaturesInfo {
    #[prost(bool, tag = "1")]
    pub rbac: bool,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Version {
    #[prost(message, optional, tag = "1")]
    pub metadata: Option<Metadata>,
    #[prost(message, optional, tag = "2")]
    pub version: Option<VersionInfo>,
    #[prost(message, optional, tag = "3")]
    pub platform: Option<PlatformInfo>,
    #[prost(message, optional, tag = "4")]
    pub features: Option<FeaturesInfo>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct VersionResponse {
    #[prost(message, repeated, tag = "1")]
    pub messages: Vec<Version>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum UpgradeRebootMode {
    Default = 0,
    Powercycle = 1,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct UpgradeRequest {
    #[prost(string, tag = "1")]
    pub image: String,
    #[prost(bool, tag = "2")]
    pub preserve: bool,
    #[prost(bool, tag = "3")]
    pub stage: bool,
    #[prost(bool, tag = "4")]
    pub force: bool,
    #[prost(enumeration = "UpgradeRebootMode", tag = "5")]
    pub reboot_mode: i32,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Upgrade {
    #[prost(message, optional, tag = "1")]
    pub metadata: Option<Metadata>,
    #[prost(string, tag = "2")]
    pub ack: String,
    #[prost(string, tag = "3")]
    pub actor_id: String,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct UpgradeResponse {
    #[prost(message, repeated, tag = "1")]
    pub messages: Vec<Upgrade>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct ResetPartitionSpec {
    #[prost(string, tag = "1")]
    pub label: String,
    #[prost(bool, tag = "2")]
    pub wipe: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum WipeMode {
    All = 0,
    SystemDisk = 1,
    UserDisks = 2,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct ResetRequest {
    #[prost(bool, tag = "1")]
    pub graceful: bool,
    #[prost(bool, tag = "2")]
    pub reboot: bool,
    #[prost(message, repeated, tag = "3")]
    pub system_partitions_to_wipe: Vec<ResetPartitionSpec>,
    #[prost(string, repeated, tag = "4")]
    pub user_disks_to_wipe: Vec<String>,
    #[prost(enumeration = "WipeMode", tag = "5")]
    pub mode: i32,
}

/// Reply item of Reset and Reboot: the envelope plus the id of the asynchronous actor.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ActorReply {
    #[prost(message, optional, tag = "1")]
    pub metadata: Option<Metadata>,
    #[prost(string, tag = "2")]
    pub actor_id: String,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct ActorReplyResponse {
    #[prost(message, repeated, tag = "1")]
    pub messages: Vec<ActorReply>,
}

pub type ResetResponse = ActorReplyResponse;
pub type RebootResponse = ActorReplyResponse;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum RebootMode {
    Default = 0,
    Powercycle = 1,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct RebootRequest {
    #[prost(enumeration = "RebootMode", tag = "1")]
    pub mode: i32,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct EtcdMemberListRequest {
    #[prost(bool, tag = "1")]
    pub query_local: bool,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct EtcdMember {
    #[prost(uint64, tag = "2")]
    pub id: u64,
    #[prost(string, tag = "3")]
    pub hostname: String,
    #[prost(string, repeated, tag = "4")]
    pub peer_urls: Vec<String>,
    #[prost(string, repeated, tag = "5")]
    pub client_urls: Vec<String>,
    #[prost(bool, tag = "6")]
    pub is_learner: bool,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct EtcdMembers {
    #[prost(message, optional, tag = "1")]
    pub metadata: Option<Metadata>,
    #[prost(string, repeated, tag = "2")]
    pub legacy_members: Vec<String>,
    #[prost(message, repeated, tag = "3")]
    pub members: Vec<EtcdMember>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct EtcdMemberListResponse {
    #[prost(message, repeated, tag = "1")]
    pub messages: Vec<EtcdMembers>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct EtcdRemoveMemberByIdRequest {
    #[prost(uint64, tag = "1")]
    pub member_id: u64,
}

/// `EtcdSnapshotRequest` has no fields.
#[derive(Clone, PartialEq, prost::Message)]
pub struct EtcdSnapshotRequest {}

#[derive(Clone, PartialEq, prost::Message)]
pub struct ServiceEvent {
    #[prost(string, tag = "1")]
    pub msg: String,
    #[prost(string, tag = "2")]
    pub state: String,
    #[prost(message, optional, tag = "3")]
    pub ts: Option<prost_types::Timestamp>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct ServiceEvents {
    #[prost(message, repeated, tag = "1")]
    pub events: Vec<ServiceEvent>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct ServiceHealth {
    #[prost(bool, tag = "1")]
    pub unknown: bool,
    #[prost(bool, tag = "2")]
    pub healthy: bool,
    #[prost(string, tag = "3")]
    pub last_message: String,
    #[prost(message, optional, tag = "4")]
    pub last_change: Option<prost_types::Timestamp>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct ServiceInfo {
    #[prost(string, tag = "1")]
    pub id: String,
    #[prost(string, tag = "2")]
    pub state: String,
    #[prost(message, optional, tag = "3")]
    pub events: Option<ServiceEvents>,
    #[prost(message, optional, tag = "4")]
    pub health: Option<ServiceHealth>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct ServiceList {
    #[prost(message, optional, tag = "1")]
    pub metadata: Option<Metadata>,
    #[prost(message, repeated, tag = "2")]
    pub services: Vec<ServiceInfo>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct ServiceListResponse {
    #[prost(message, repeated, tag = "1")]
    pub messages: Vec<ServiceList>,
}
