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
