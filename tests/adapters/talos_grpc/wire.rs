//! Wire compatibility, checked against Talos's field numbers (TALOS-FACTS §1) with a protobuf reader and
//! writer written here, independent of the prost types in `kiln::talos::grpc::proto`:
//! - what kiln's client sends, captured by a bare gRPC server that records raw request bytes and answers
//!   with replies encoded by hand;
//! - what the simulator answers, fetched with raw request bytes encoded by hand.

use std::collections::HashMap;
use std::convert::Infallible;
use std::io::Read;
use std::sync::{Arc, Mutex};

use bytes::{Buf, BufMut};
use http::uri::PathAndQuery;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::{Request, Status};

use super::*;

// ---- an independent protobuf reader/writer ------------------------------------------------------

#[derive(Clone, Debug, PartialEq)]
enum Val {
    Varint(u64),
    Len(Vec<u8>),
    Fixed64(u64),
    Fixed32(u32),
}

fn read_varint(b: &mut &[u8]) -> u64 {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let byte = b[0];
        *b = &b[1..];
        v |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return v;
        }
    }
    panic!("varint too long")
}

/// Every (field number, value) of one message, in wire order.
fn fields(mut b: &[u8]) -> Vec<(u64, Val)> {
    let mut out = Vec::new();
    while !b.is_empty() {
        let key = read_varint(&mut b);
        let (num, wire) = (key >> 3, key & 7);
        let val = match wire {
            0 => Val::Varint(read_varint(&mut b)),
            1 => {
                let v = u64::from_le_bytes(b[..8].try_into().unwrap());
                b = &b[8..];
                Val::Fixed64(v)
            }
            2 => {
                let len = read_varint(&mut b) as usize;
                let v = b[..len].to_vec();
                b = &b[len..];
                Val::Len(v)
            }
            5 => {
                let v = u32::from_le_bytes(b[..4].try_into().unwrap());
                b = &b[4..];
                Val::Fixed32(v)
            }
            other => panic!("wire type {other} is not used by these messages"),
        };
        out.push((num, val));
    }
    out
}

fn field_numbers(b: &[u8]) -> Vec<u64> {
    fields(b).into_iter().map(|(n, _)| n).collect()
}

fn len(b: &[u8], num: u64) -> Vec<u8> {
    fields(b)
        .into_iter()
        .find_map(|(n, v)| match (n == num, v) {
            (true, Val::Len(x)) => Some(x),
            _ => None,
        })
        .unwrap_or_else(|| panic!("no length-delimited field {num} in {:?}", fields(b)))
}

fn all_len(b: &[u8], num: u64) -> Vec<Vec<u8>> {
    fields(b)
        .into_iter()
        .filter_map(|(n, v)| match (n == num, v) {
            (true, Val::Len(x)) => Some(x),
            _ => None,
        })
        .collect()
}

fn string(b: &[u8], num: u64) -> String {
    String::from_utf8(len(b, num)).unwrap()
}

fn varint(b: &[u8], num: u64) -> u64 {
    fields(b)
        .into_iter()
        .find_map(|(n, v)| match (n == num, v) {
            (true, Val::Varint(x)) => Some(x),
            _ => None,
        })
        .unwrap_or_else(|| panic!("no varint field {num} in {:?}", fields(b)))
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    loop {
        let byte = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

fn f_len(num: u64, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    put_varint(&mut out, num << 3 | 2);
    put_varint(&mut out, payload.len() as u64);
    out.extend_from_slice(payload);
    out
}

fn f_varint(num: u64, v: u64) -> Vec<u8> {
    let mut out = Vec::new();
    put_varint(&mut out, num << 3);
    put_varint(&mut out, v);
    out
}

fn cat(parts: &[Vec<u8>]) -> Vec<u8> {
    parts.concat()
}

// ---- a gRPC codec that moves raw message bytes ---------------------------------------------------

#[derive(Clone, Copy, Default)]
struct Raw;
struct RawEncoder;
struct RawDecoder;

impl Codec for Raw {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawEncoder;
    type Decoder = RawDecoder;
    fn encoder(&mut self) -> RawEncoder {
        RawEncoder
    }
    fn decoder(&mut self) -> RawDecoder {
        RawDecoder
    }
}

impl Encoder for RawEncoder {
    type Item = Vec<u8>;
    type Error = Status;
    fn encode(&mut self, item: Vec<u8>, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for RawDecoder {
    type Item = Vec<u8>;
    type Error = Status;
    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Vec<u8>>, Status> {
        let mut v = vec![0u8; src.remaining()];
        src.copy_to_slice(&mut v);
        Ok(Some(v))
    }
}

async fn raw_unary(
    client: &TalosClient,
    path: &'static str,
    body: Vec<u8>,
) -> Result<Vec<u8>, Status> {
    let mut grpc = tonic::client::Grpc::new(client.channel());
    grpc.ready()
        .await
        .map_err(|e| Status::unavailable(e.to_string()))?;
    grpc.unary(Request::new(body), PathAndQuery::from_static(path), Raw)
        .await
        .map(|r| r.into_inner())
}

async fn raw_stream(
    client: &TalosClient,
    path: &'static str,
    body: Vec<u8>,
) -> Result<Vec<Vec<u8>>, Status> {
    let mut grpc = tonic::client::Grpc::new(client.channel());
    grpc.ready()
        .await
        .map_err(|e| Status::unavailable(e.to_string()))?;
    let mut stream = grpc
        .server_streaming(Request::new(body), PathAndQuery::from_static(path), Raw)
        .await?
        .into_inner();
    let mut out = Vec::new();
    while let Some(m) = stream.message().await? {
        out.push(m);
    }
    Ok(out)
}

// ---- kiln's client, captured --------------------------------------------------------------------

type Recorded = Arc<Mutex<HashMap<String, Vec<Vec<u8>>>>>;

/// A bare gRPC server (TLS with ALPN h2, no client cert, like a node in maintenance) that records each
/// request's raw bytes by path and answers with the reply given for that path, encoded by hand.
async fn capture_server(
    at: SocketAddr,
    replies: HashMap<&'static str, Vec<u8>>,
) -> (Recorded, tokio::task::JoinHandle<()>) {
    let recorded: Recorded = Arc::default();
    let replies = Arc::new(replies);
    let rec = recorded.clone();
    let svc = tower::service_fn(move |req: http::Request<tonic::body::Body>| {
        let rec = rec.clone();
        let replies = replies.clone();
        async move {
            let path = req.uri().path().to_owned();
            // The deadline header too, under `grpc-timeout <path>`: every call must carry one.
            if let Some(t) = req.headers().get("grpc-timeout") {
                rec.lock()
                    .unwrap()
                    .entry(format!("grpc-timeout {path}"))
                    .or_default()
                    .push(t.as_bytes().to_vec());
            }
            let reply = replies.get(path.as_str()).cloned();
            let inner = tower::service_fn(move |r: Request<Vec<u8>>| {
                let rec = rec.clone();
                let path = path.clone();
                let reply = reply.clone();
                async move {
                    rec.lock()
                        .unwrap()
                        .entry(path.clone())
                        .or_default()
                        .push(r.into_inner());
                    reply
                        .map(tonic::Response::new)
                        .ok_or_else(|| Status::unimplemented(path))
                }
            });
            Ok::<_, Infallible>(tonic::server::Grpc::new(Raw).unary(inner, req).await)
        }
    });
    let listener = tokio::net::TcpListener::bind(at)
        .await
        .expect("bind the capture server");
    let tls = kiln::sim::talos::pki::maintenance_server_config(at.ip()).unwrap();
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let task = tokio::spawn(async move {
        let accept = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                if let Ok(s) = tokio_rustls::TlsAcceptor::from(tls.clone())
                    .accept(tcp)
                    .await
                {
                    let _ = tx.send(Ok::<_, std::io::Error>(s)).await;
                }
            }
        });
        let incoming = tokio_stream::wrappers::ReceiverStream::new(rx);
        let _ = tonic::transport::Server::builder()
            .serve_with_incoming(svc, incoming)
            .await;
        accept.abort();
    });
    (recorded, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_requests_carry_talos_field_numbers() {
    use kiln::talos::grpc::proto::machine::ApplyMode;
    use kiln::talos::grpc::proto::paths;

    // Replies in Talos's shapes: `XxxResponse { repeated Xxx messages = 1 }`, each item's metadata = 1.
    let apply_item = cat(&[
        f_len(2, b"a warning"),
        f_varint(3, 2),
        f_len(4, b"Applied configuration without a reboot"),
    ]);
    let member = cat(&[
        f_varint(2, 77),
        f_len(3, b"m1"),
        f_len(4, b"https://127.0.0.1:2380"),
    ]);
    let cosi_meta = cat(&[
        f_len(1, b"hardware"),
        f_len(2, b"SystemInformations.hardware.talos.dev"),
        f_len(3, b"systeminformation"),
    ]);
    let replies = HashMap::from([
        (paths::APPLY_CONFIGURATION, f_len(1, &apply_item)),
        (
            paths::UPGRADE,
            f_len(
                1,
                &cat(&[f_len(2, b"Upgrade request received"), f_len(3, b"actor-u")]),
            ),
        ),
        (paths::RESET, f_len(1, &f_len(2, b"actor-r"))),
        (paths::BOOTSTRAP, f_len(1, &[])),
        (paths::ETCD_REMOVE_MEMBER_BY_ID, f_len(1, &[])),
        (paths::ETCD_MEMBER_LIST, f_len(1, &f_len(3, &member))),
        (
            paths::COSI_GET,
            f_len(
                1,
                &cat(&[
                    f_len(1, &cosi_meta),
                    f_len(2, &f_len(2, b"uuid: wire-uuid\n")),
                ]),
            ),
        ),
        // An envelope whose metadata.error is set: an error for the client although the call succeeded.
        (
            paths::VERSION,
            f_len(1, &f_len(1, &f_len(2, b"node exploded"))),
        ),
    ]);
    let at = addr(51);
    let (recorded, server) = capture_server(at, replies).await;
    let client = TalosClient::connect_insecure(at, options()).await.unwrap();

    let outcome = client
        .apply_configuration(b"version: v1alpha1\n", ApplyMode::Auto, true)
        .await
        .unwrap();
    assert_eq!(outcome.mode, ApplyMode::NoReboot);
    assert_eq!(outcome.warnings, ["a warning"]);
    assert_eq!(
        outcome.mode_details,
        "Applied configuration without a reboot"
    );
    assert_eq!(
        client
            .upgrade("ghcr.io/siderolabs/installer:v1.13.10", true)
            .await
            .unwrap(),
        "Upgrade request received"
    );
    assert_eq!(client.reset(true, true).await.unwrap(), "actor-r");
    assert_eq!(
        client.bootstrap(false).await.unwrap(),
        BootstrapOutcome::Bootstrapped
    );
    client.etcd_remove_member_by_id(0xdead).await.unwrap();
    let members = client.etcd_member_list().await.unwrap();
    assert_eq!((members[0].id, members[0].hostname.as_str()), (77, "m1"));
    assert_eq!(
        kiln::talos::grpc::state::system_uuid(&client)
            .await
            .unwrap(),
        "wire-uuid"
    );
    let err = client.version().await.unwrap_err();
    assert!(
        matches!(err, TalosError::NodeReported { .. }) && err.to_string().contains("node exploded"),
        "{err}"
    );

    let rec = recorded.lock().unwrap().clone();
    let one = |p: &str| {
        rec.get(p)
            .unwrap_or_else(|| panic!("no {p} request captured"))[0]
            .clone()
    };
    // ApplyConfigurationRequest: data = 1 (bytes), mode = 4 (AUTO = 1, sent explicitly), dry_run = 5.
    let apply = one(paths::APPLY_CONFIGURATION);
    assert_eq!(len(&apply, 1), b"version: v1alpha1\n");
    assert_eq!(varint(&apply, 4), 1);
    assert_eq!(varint(&apply, 5), 1);
    assert_eq!(field_numbers(&apply), [1, 4, 5]);
    // UpgradeRequest: image = 1, preserve = 2.
    let upgrade = one(paths::UPGRADE);
    assert_eq!(string(&upgrade, 1), "ghcr.io/siderolabs/installer:v1.13.10");
    assert_eq!(varint(&upgrade, 2), 1);
    // ResetRequest: graceful = 1, reboot = 2.
    let reset = one(paths::RESET);
    assert_eq!((varint(&reset, 1), varint(&reset, 2)), (1, 1));
    // BootstrapRequest { recover_etcd = 1 } false: nothing on the wire.
    assert!(one(paths::BOOTSTRAP).is_empty());
    // EtcdRemoveMemberByIDRequest: member_id = 1 (uint64).
    assert_eq!(varint(&one(paths::ETCD_REMOVE_MEMBER_BY_ID), 1), 0xdead);
    // cosi GetRequest: namespace = 1, type = 2, id = 3, options = 4.
    let get = one(paths::COSI_GET);
    assert_eq!(string(&get, 1), "hardware");
    assert_eq!(string(&get, 2), "SystemInformations.hardware.talos.dev");
    assert_eq!(string(&get, 3), "systeminformation");
    assert_eq!(field_numbers(&get), [1, 2, 3, 4]);
    // Every call carried its deadline as `grpc-timeout` (`Endpoint::timeout` sends none).
    for p in [
        paths::APPLY_CONFIGURATION,
        paths::UPGRADE,
        paths::RESET,
        paths::BOOTSTRAP,
        paths::ETCD_REMOVE_MEMBER_BY_ID,
        paths::ETCD_MEMBER_LIST,
        paths::COSI_GET,
        paths::VERSION,
    ] {
        let sent = rec
            .get(&format!("grpc-timeout {p}"))
            .unwrap_or_else(|| panic!("{p} was sent without grpc-timeout"));
        assert!(
            sent.iter().all(|t| !t.is_empty()),
            "{p}: empty grpc-timeout"
        );
    }
    // Kiln never sends the `nodes`/`node` routing headers: it dials each node itself (checked in the
    // client's code path: no metadata is added to any request).
    server.abort();
}

// ---- the simulator, read raw ---------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simulator_replies_carry_talos_field_numbers() {
    use kiln::talos::grpc::proto::paths;

    let cluster = cluster("wire", 41, 1, 0);
    let sim = start_sim(&[NodeSpec {
        addr: addr(41),
        uuid: Some("wire-41".into()),
        version: None,
        platform: None,
    }])
    .await;
    let insecure = TalosClient::connect_insecure(addr(41), options())
        .await
        .unwrap();

    // cosi GetResponse { Resource resource = 1 { Metadata metadata = 1; Spec spec = 2 } }.
    let get = cat(&[
        f_len(1, b"runtime"),
        f_len(2, b"MachineStatuses.runtime.talos.dev"),
        f_len(3, b"machine"),
    ]);
    let reply = raw_unary(&insecure, paths::COSI_GET, get).await.unwrap();
    let resource = len(&reply, 1);
    let meta = len(&resource, 1);
    assert_eq!(string(&meta, 1), "runtime");
    assert_eq!(string(&meta, 2), "MachineStatuses.runtime.talos.dev");
    assert_eq!(string(&meta, 3), "machine");
    assert!(!string(&meta, 4).is_empty(), "version = 4");
    let spec = len(&resource, 2);
    assert!(
        string(&spec, 2).contains("stage: maintenance"),
        "yaml_spec = 2"
    );

    // VersionResponse { repeated Version messages = 1 { VersionInfo version = 2 { tag = 1 }; PlatformInfo
    // platform = 3 { name = 1 } } }.
    let reply = raw_unary(&insecure, paths::VERSION, Vec::new())
        .await
        .unwrap();
    let item = len(&reply, 1);
    assert_eq!(string(&len(&item, 2), 1), "v1.13.9");
    assert_eq!(string(&len(&item, 3), 1), "nocloud");

    // ApplyConfiguration with a hand-encoded request: data = 1, mode = 4 (AUTO).
    let config = config_for(&cluster, ip(41));
    let req = cat(&[f_len(1, config.as_bytes()), f_varint(4, 1)]);
    let reply = raw_unary(&insecure, paths::APPLY_CONFIGURATION, req)
        .await
        .unwrap();
    let item = len(&reply, 1);
    assert_eq!(varint(&item, 3), 2, "mode = 3: NO_REBOOT");
    assert!(!string(&item, 4).is_empty(), "mode_details = 4");
    assert_eq!(sim.applied_config(addr(41)).unwrap(), config.as_bytes());

    let client = TalosClient::connect_mtls(addr(41), &admin(), options())
        .await
        .unwrap();
    // BootstrapResponse { repeated Bootstrap messages = 1 }; a second one is AlreadyExists.
    let reply = raw_unary(&client, paths::BOOTSTRAP, Vec::new())
        .await
        .unwrap();
    assert_eq!(field_numbers(&reply), [1]);
    let again = raw_unary(&client, paths::BOOTSTRAP, Vec::new())
        .await
        .unwrap_err();
    assert_eq!(again.code(), tonic::Code::AlreadyExists);

    // EtcdMemberListResponse { messages = 1 { members = 3 { id = 2; hostname = 3; peer_urls = 4;
    // client_urls = 5 } } }.
    let reply = raw_unary(&client, paths::ETCD_MEMBER_LIST, Vec::new())
        .await
        .unwrap();
    let members = all_len(&len(&reply, 1), 3);
    assert_eq!(members.len(), 1);
    assert_ne!(varint(&members[0], 2), 0);
    assert_eq!(string(&members[0], 3), "wire-cp-1");
    assert_eq!(string(&members[0], 4), "https://127.0.10.41:2380");
    assert_eq!(string(&members[0], 5), "https://127.0.10.41:2379");

    // Kubeconfig: a stream of common.Data { bytes = 2 } joining into a gzip tar with one `kubeconfig`.
    let chunks = raw_stream(&client, paths::KUBECONFIG, Vec::new())
        .await
        .unwrap();
    assert!(
        chunks.len() > 1,
        "the simulator cuts the archive so clients must join chunks"
    );
    let archive: Vec<u8> = chunks.iter().flat_map(|c| len(c, 2)).collect();
    let mut tar = tar::Archive::new(flate2::read::GzDecoder::new(&archive[..]));
    let mut names = Vec::new();
    let mut text = String::new();
    for entry in tar.entries().unwrap() {
        let mut entry = entry.unwrap();
        names.push(entry.path().unwrap().to_string_lossy().into_owned());
        assert_eq!(entry.header().mode().unwrap() & 0o777, 0o600);
        entry.read_to_string(&mut text).unwrap();
    }
    assert_eq!(names, ["kubeconfig"]);
    assert!(text.contains("admin@wire"));

    // ServiceListResponse { messages = 1 { services = 2 { id = 1; state = 2; health = 4 { healthy = 2 } } } }.
    let reply = raw_unary(&client, paths::SERVICE_LIST, Vec::new())
        .await
        .unwrap();
    let services = all_len(&len(&reply, 1), 2);
    let etcd = services
        .iter()
        .find(|s| string(s, 1) == "etcd")
        .expect("etcd service");
    assert_eq!(string(etcd, 2), "Running");
    assert_eq!(varint(&len(etcd, 4), 2), 1);
}

/// Issue 26: the new upgrade flow read raw (api/machine/image.proto, lifecycle.proto, v1.13.9):
/// `ImageServicePullRequest { ContainerdInstance containerd = 1 { driver = 1; namespace = 2 };
/// image_ref = 3 }` → stream of `{ oneof { name = 1; pull_progress = 2 } }`;
/// `LifecycleServiceUpgradeRequest { containerd = 1; InstallArtifactsSource source = 2 { image_name = 1 } }`
/// → stream of `{ LifecycleServiceInstallProgress progress = 1 { oneof { message = 1; exit_code = 2 } } }`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgrade_streams_carry_talos_field_numbers() {
    use kiln::talos::grpc::proto::paths;

    let cluster = cluster("wireupg", 143, 1, 0);
    let _sim = start_sim(&[NodeSpec {
        addr: addr(143),
        uuid: None,
        version: None,
        platform: None,
    }])
    .await;
    port()
        .apply_in_maintenance(ip(143), "", config_for(&cluster, ip(143)).as_bytes())
        .await
        .unwrap();
    let client = TalosClient::connect_mtls(addr(143), &admin(), options())
        .await
        .unwrap();
    let image = b"factory.talos.dev/nocloud-installer/abc:v1.13.10";
    // talosctl's "system" containerd: driver CRI = 1, namespace NS_SYSTEM = 1.
    let containerd = cat(&[f_varint(1, 1), f_varint(2, 1)]);

    let pull = cat(&[f_len(1, &containerd), f_len(3, image)]);
    let items = raw_stream(&client, paths::IMAGE_PULL, pull).await.unwrap();
    let last = items.last().expect("a pull stream");
    assert_eq!(len(last, 1), image, "the pulled image's name = 1, last");
    assert!(
        items[..items.len() - 1]
            .iter()
            .all(|i| field_numbers(i) == [2]),
        "progress = 2 before it"
    );

    let upgrade = cat(&[f_len(1, &containerd), f_len(2, &f_len(1, image))]);
    let items = raw_stream(&client, paths::LIFECYCLE_UPGRADE, upgrade)
        .await
        .unwrap();
    let progress: Vec<Vec<u8>> = items.iter().map(|i| len(i, 1)).collect();
    assert!(
        progress[..progress.len() - 1]
            .iter()
            .all(|p| field_numbers(p) == [1] && !string(p, 1).is_empty())
    );
    let end = progress.last().unwrap();
    assert_eq!(field_numbers(end), [2], "exit_code = 2 last");
    // proto3 writes a zero int32 of a oneof explicitly.
    assert_eq!(varint(end, 2), 0);
}
