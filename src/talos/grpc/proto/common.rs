//! Package `common` (`api/common/common.proto`).

/// `google.rpc.Status`, carried inside `common.Metadata` in one-to-many replies.
#[derive(Clone, PartialEq, prost::Message)]
pub struct RpcStatus {
    #[prost(int32, tag = "1")]
    pub code: i32,
    #[prost(string, tag = "2")]
    pub message: String,
    #[prost(message, repeated, tag = "3")]
    pub details: Vec<prost_types::Any>,
}

/// Per-node envelope metadata; `error` set means this node's part of the call failed.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Metadata {
    #[prost(string, tag = "1")]
    pub hostname: String,
    #[prost(string, tag = "2")]
    pub error: String,
    #[prost(message, optional, tag = "3")]
    pub status: Option<RpcStatus>,
}

/// A chunk of a streamed payload (kubeconfig archive, etcd snapshot).
#[derive(Clone, PartialEq, prost::Message)]
pub struct Data {
    #[prost(message, optional, tag = "1")]
    pub metadata: Option<Metadata>,
    #[prost(bytes = "vec", tag = "2")]
    pub bytes: Vec<u8>,
}

/// `common.ContainerdInstance`: which containerd (and namespace) an image call works in.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ContainerdInstance {
    #[prost(enumeration = "ContainerdDriver", tag = "1")]
    pub driver: i32,
    #[prost(enumeration = "ContainerdNamespace", tag = "2")]
    pub namespace: i32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum ContainerdDriver {
    Containerd = 0,
    Cri = 1,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum ContainerdNamespace {
    NsUnknown = 0,
    NsSystem = 1,
    NsCri = 2,
}

impl ContainerdInstance {
    /// talosctl's default for `upgrade` and `image pull` ("system"): the CRI driver, system namespace
    /// (v1.13.9 `cmd/talosctl/cmd/talos/image.go`, TALOS-FACTS §1.4 "Upgrade").
    pub fn system() -> Self {
        Self {
            driver: ContainerdDriver::Cri as i32,
            namespace: ContainerdNamespace::NsSystem as i32,
        }
    }
}
