//! Talos: secrets bundle, PKI, machine configs per contract, talosconfig; `grpc`: the wire client.

pub mod grpc;
