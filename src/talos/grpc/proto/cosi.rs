//! Package `cosi.resource` (cosi-project/specification `proto/v1alpha1/{resource,state}.proto`).

use std::collections::HashMap;

#[derive(Clone, PartialEq, prost::Message)]
pub struct Metadata {
    #[prost(string, tag = "1")]
    pub namespace: String,
    #[prost(string, tag = "2")]
    pub r#type: String,
    #[prost(string, tag = "3")]
    pub id: String,
    #[prost(string, tag = "4")]
    pub version: String,
    #[prost(string, tag = "5")]
    pub owner: String,
    #[prost(string, tag = "6")]
    pub phase: String,
    #[prost(message, optional, tag = "7")]
    pub created: Option<prost_types::Timestamp>,
    #[prost(message, optional, tag = "8")]
    pub updated: Option<prost_types::Timestamp>,
    #[prost(string, repeated, tag = "9")]
    pub finalizers: Vec<String>,
    #[prost(map = "string, string", tag = "10")]
    pub labels: HashMap<String, String>,
    #[prost(map = "string, string", tag = "11")]
    pub annotations: HashMap<String, String>,
}

/// Talos fills both representations; kiln reads `yaml_spec` (the proto form differs per resource type).
#[derive(Clone, PartialEq, prost::Message)]
pub struct Spec {
    #[prost(bytes = "vec", tag = "1")]
    pub proto_spec: Vec<u8>,
    #[prost(string, tag = "2")]
    pub yaml_spec: String,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Resource {
    #[prost(message, optional, tag = "1")]
    pub metadata: Option<Metadata>,
    #[prost(message, optional, tag = "2")]
    pub spec: Option<Spec>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct GetOptions {}

#[derive(Clone, PartialEq, prost::Message)]
pub struct GetRequest {
    #[prost(string, tag = "1")]
    pub namespace: String,
    #[prost(string, tag = "2")]
    pub r#type: String,
    #[prost(string, tag = "3")]
    pub id: String,
    #[prost(message, optional, tag = "4")]
    pub options: Option<GetOptions>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct GetResponse {
    #[prost(message, optional, tag = "1")]
    pub resource: Option<Resource>,
}

/// Label and id queries are not used by kiln; the empty options message keeps the field present.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ListOptions {}

#[derive(Clone, PartialEq, prost::Message)]
pub struct ListRequest {
    #[prost(string, tag = "1")]
    pub namespace: String,
    #[prost(string, tag = "2")]
    pub r#type: String,
    #[prost(message, optional, tag = "3")]
    pub options: Option<ListOptions>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct ListResponse {
    #[prost(message, optional, tag = "1")]
    pub resource: Option<Resource>,
}
