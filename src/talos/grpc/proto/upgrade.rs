//! Package `machine`, the two services of the new upgrade flow (Talos ≥ v1.13):
//! `api/machine/image.proto` (`ImageService.Pull`) and `api/machine/lifecycle.proto`
//! (`LifecycleService.Upgrade`), siderolabs/talos v1.13.9. Both answer with a server stream.

use super::common::ContainerdInstance;

#[derive(Clone, PartialEq, prost::Message)]
pub struct ImageServicePullRequest {
    #[prost(message, optional, tag = "1")]
    pub containerd: Option<ContainerdInstance>,
    /// Field 2 is not used in the proto.
    #[prost(string, tag = "3")]
    pub image_ref: String,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct ImageServicePullLayerProgress {
    #[prost(int32, tag = "1")]
    pub status: i32,
    #[prost(message, optional, tag = "2")]
    pub elapsed: Option<prost_types::Duration>,
    #[prost(int64, tag = "3")]
    pub offset: i64,
    #[prost(int64, tag = "4")]
    pub total: i64,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct ImageServicePullProgress {
    #[prost(string, tag = "1")]
    pub layer_id: String,
    #[prost(message, optional, tag = "2")]
    pub progress: Option<ImageServicePullLayerProgress>,
}

#[derive(Clone, PartialEq, prost::Oneof)]
pub enum PullResponse {
    /// The pulled image's name, once done.
    #[prost(string, tag = "1")]
    Name(String),
    #[prost(message, tag = "2")]
    PullProgress(ImageServicePullProgress),
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct ImageServicePullResponse {
    #[prost(oneof = "PullResponse", tags = "1, 2")]
    pub response: Option<PullResponse>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct InstallArtifactsSource {
    #[prost(string, tag = "1")]
    pub image_name: String,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct LifecycleServiceUpgradeRequest {
    #[prost(message, optional, tag = "1")]
    pub containerd: Option<ContainerdInstance>,
    #[prost(message, optional, tag = "2")]
    pub source: Option<InstallArtifactsSource>,
}

#[derive(Clone, PartialEq, prost::Oneof)]
pub enum InstallProgress {
    #[prost(string, tag = "1")]
    Message(String),
    /// The installer's exit code: 0 is success, anything else a failure although the call succeeded.
    #[prost(int32, tag = "2")]
    ExitCode(i32),
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct LifecycleServiceInstallProgress {
    #[prost(oneof = "InstallProgress", tags = "1, 2")]
    pub response: Option<InstallProgress>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct LifecycleServiceUpgradeResponse {
    #[prost(message, optional, tag = "1")]
    pub progress: Option<LifecycleServiceInstallProgress>,
}
