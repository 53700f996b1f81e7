//! One connection to one node's apid (`<ip>:50000`), and the MachineService / COSI calls kiln makes.
//!
//! kiln always dials the node it means (no `node`/`nodes` routing header), so every reply has exactly one
//! envelope item; an item whose `metadata.error` is set is still treated as an error, as talosctl does.

use std::future::Future;
use std::io::Read;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use http::uri::PathAndQuery;
use hyper_util::rt::TokioIo;
use rustls::ClientConfig;
use rustls_pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tonic::transport::{Channel, Endpoint, Uri};
use tracing::Instrument;

use super::error::TalosError;
use super::proto::common::{Data, Metadata};
use super::proto::{cosi, machine, paths};
use super::tls::{self, ALPN_H2, ClientIdentity};
use crate::redact::Secret;

/// Talos's apid port.
pub const APID_PORT: u16 = 50000;
/// apid accepts 32 MiB messages; so must kiln, or a large etcd snapshot chunk or config breaks.
pub const MAX_MESSAGE: usize = 32 * 1024 * 1024;

/// How much longer than a call's deadline kiln waits locally before it gives up on the reply.
const LOCAL_SLACK: Duration = Duration::from_secs(1);

/// Every Talos request carries its deadline as `grpc-timeout`.
/// A snapshot as it streams from a node; chunks are handed on, never joined.
pub type ByteStream = Pin<Box<dyn futures::Stream<Item = Result<bytes::Bytes, TalosError>> + Send>>;
/// What an upload reads from; an error cancels the upload.
pub type UploadStream =
    Pin<Box<dyn futures::Stream<Item = Result<bytes::Bytes, std::io::Error>> + Send>>;

/// An upload from bytes already in memory (tests, the simulator's callers).
pub fn upload_from(bytes: impl Into<bytes::Bytes>) -> UploadStream {
    Box::pin(futures::stream::once(futures::future::ready(Ok(
        bytes.into()
    ))))
}

/// Reads a snapshot stream to its end (tests and small snapshots; the backup path streams).
pub async fn collect(mut stream: ByteStream) -> Result<Vec<u8>, TalosError> {
    use futures::StreamExt;
    let mut out = Vec::new();
    while let Some(chunk) = stream.next().await {
        out.extend_from_slice(&chunk?);
    }
    Ok(out)
}

/// talosctl's upload chunk: `Client.EtcdRecover` (`pkg/machinery/client/client.go`, v1.13.9) reads
/// the file into a 4 KiB buffer and sends each read.
const UPLOAD_CHUNK: usize = 4096;

/// Cuts a byte stream into pieces of at most `size` (the source may hand over large buffers).
fn rechunk(
    source: UploadStream,
    size: usize,
) -> impl futures::Stream<Item = Result<bytes::Bytes, std::io::Error>> + Send {
    futures::stream::unfold(
        (source, bytes::Bytes::new(), false),
        move |(mut source, mut rest, done)| async move {
            use futures::StreamExt;
            loop {
                if !rest.is_empty() {
                    let piece = rest.split_to(size.min(rest.len()));
                    return Some((Ok(piece), (source, rest, done)));
                }
                if done {
                    return None;
                }
                match source.next().await {
                    None => return None,
                    Some(Err(e)) => return Some((Err(e), (source, rest, true))),
                    Some(Ok(b)) => rest = b,
                }
            }
        },
    )
}

fn with_deadline<T>(message: T, deadline: Duration) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.set_timeout(deadline);
    request
}

/// How a connection authenticated: the mode decides what the node lets kiln do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Insecure,
    Mutual,
}

#[derive(Clone, Debug)]
pub struct ClientOptions {
    pub connect_timeout: Duration,
    pub call_timeout: Duration,
}

impl Default for ClientOptions {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(5),
            call_timeout: Duration::from_secs(60),
        }
    }
}

/// What an ApplyConfiguration did, from the node's reply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApplyOutcome {
    /// The mode the node chose (unset, i.e. `Reboot`, in ≤1.12 maintenance replies).
    pub mode: machine::ApplyMode,
    pub mode_details: String,
    pub warnings: Vec<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BootstrapOutcome {
    Bootstrapped,
    /// `AlreadyExists`: this node's etcd has data, so the cluster was bootstrapped before. Idempotent success.
    AlreadyBootstrapped,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VersionReport {
    pub tag: String,
    pub platform: String,
}

pub struct TalosClient {
    addr: SocketAddr,
    mode: Mode,
    channel: Channel,
    options: ClientOptions,
    /// Insecure mode: the SHA-256 of the certificate the first handshake saw; every later dial of this
    /// client must meet the same one (DESIGN §4 "Maintenance identity").
    pinned: Option<[u8; 32]>,
}

type Io = TokioIo<TlsStream<TcpStream>>;

/// Hands tonic the connection `connect` already established (so handshake failures surface as typed
/// errors), and dials afresh with the same TLS settings should tonic ever reconnect.
#[derive(Clone)]
struct Connector {
    addr: SocketAddr,
    config: Arc<ClientConfig>,
    timeout: Duration,
    first: Arc<Mutex<Option<Io>>>,
}

impl tower::Service<Uri> for Connector {
    type Response = Io;
    type Error = TalosError;
    type Future = Pin<Box<dyn Future<Output = Result<Io, TalosError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _uri: Uri) -> Self::Future {
        let taken = self.first.lock().expect("connector lock").take();
        let (addr, config, timeout) = (self.addr, self.config.clone(), self.timeout);
        Box::pin(async move {
            match taken {
                Some(io) => Ok(io),
                None => dial(addr, config, timeout).await,
            }
        })
    }
}

async fn dial(
    addr: SocketAddr,
    config: Arc<ClientConfig>,
    timeout: Duration,
) -> Result<Io, TalosError> {
    let tcp = tokio::time::timeout(timeout, TcpStream::connect(addr))
        .await
        .map_err(|_| TalosError::Unreachable {
            addr,
            message: format!("no TCP answer within {timeout:?}"),
        })?
        .map_err(|e| TalosError::Unreachable {
            addr,
            message: e.to_string(),
        })?;
    let _ = tcp.set_nodelay(true);
    let name = ServerName::IpAddress(addr.ip().into());
    let tls = tokio::time::timeout(
        timeout,
        tokio_rustls::TlsConnector::from(config).connect(name, tcp),
    )
    .await
    .map_err(|_| TalosError::Handshake {
        addr,
        message: format!("no TLS answer within {timeout:?}"),
    })?
    .map_err(|e| TalosError::Handshake {
        addr,
        message: e.to_string(),
    })?;
    if tls.get_ref().1.alpn_protocol() != Some(ALPN_H2) {
        return Err(TalosError::NoAlpnH2 { addr });
    }
    Ok(TokioIo::new(tls))
}

/// What a re-dial of a client must meet (tonic reconnects a channel whose connection dropped). Without
/// a CA, what proves the peer is the same machine is the certificate itself: pin the one seen first.
fn redial_config(
    addr: SocketAddr,
    mode: Mode,
    first: &Io,
    config: Arc<ClientConfig>,
) -> Result<(Option<[u8; 32]>, Arc<ClientConfig>), TalosError> {
    match mode {
        Mode::Insecure => {
            let pin = certificate_sha256(first).ok_or_else(|| TalosError::Handshake {
                addr,
                message: "the node showed no certificate".into(),
            })?;
            Ok((Some(pin), tls::pinned_client_config(pin)?))
        }
        Mode::Mutual => Ok((None, config)),
    }
}

fn certificate_sha256(io: &Io) -> Option<[u8; 32]> {
    use sha2::{Digest, Sha256};
    let (_, session) = io.inner().get_ref();
    let leaf = session.peer_certificates()?.first()?;
    Some(Sha256::digest(leaf.as_ref()).into())
}

impl TalosClient {
    /// Maintenance mode: no client certificate, the node's self-signed certificate is not verified.
    pub async fn connect_insecure(
        addr: SocketAddr,
        options: ClientOptions,
    ) -> Result<Self, TalosError> {
        Self::connect(
            addr,
            Mode::Insecure,
            tls::insecure_client_config()?,
            options,
        )
        .await
    }

    /// A configured node: verified against the OS CA, with kiln's `os:admin` client certificate.
    pub async fn connect_mtls(
        addr: SocketAddr,
        identity: &ClientIdentity,
        options: ClientOptions,
    ) -> Result<Self, TalosError> {
        Self::connect(
            addr,
            Mode::Mutual,
            tls::mtls_client_config(identity)?,
            options,
        )
        .await
    }

    async fn connect(
        addr: SocketAddr,
        mode: Mode,
        config: Arc<ClientConfig>,
        options: ClientOptions,
    ) -> Result<Self, TalosError> {
        let io = dial(addr, config.clone(), options.connect_timeout).await?;
        let (pinned, redial) = redial_config(addr, mode, &io, config)?;
        let connector = Connector {
            addr,
            config: redial,
            timeout: options.connect_timeout,
            first: Arc::new(Mutex::new(Some(io))),
        };
        // The scheme only tells tonic not to add TLS of its own: the connector already did it.
        let endpoint = Endpoint::from_shared(format!("http://{addr}")).map_err(|e| {
            TalosError::Unreachable {
                addr,
                message: e.to_string(),
            }
        })?;
        // No `Endpoint::timeout`: it only bounds the wait here and sends no `grpc-timeout`; every call
        // sets its deadline on the request instead (`with_deadline`).
        let channel = endpoint
            .connect_with_connector(connector)
            .await
            .map_err(|e| TalosError::Handshake {
                addr,
                message: error_chain(&e),
            })?;
        Ok(Self {
            addr,
            mode,
            channel,
            options,
            pinned,
        })
    }

    /// The SHA-256 of the node's certificate an insecure client is pinned to.
    pub fn pinned_certificate(&self) -> Option<[u8; 32]> {
        self.pinned
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// The underlying HTTP/2 channel (for calls this client does not wrap).
    pub fn channel(&self) -> Channel {
        self.channel.clone()
    }

    fn grpc(&self) -> tonic::client::Grpc<Channel> {
        tonic::client::Grpc::new(self.channel.clone())
            .max_decoding_message_size(MAX_MESSAGE)
            .max_encoding_message_size(MAX_MESSAGE)
    }

    async fn unary<Req, Resp>(&self, path: &'static str, req: Req) -> Result<Resp, TalosError>
    where
        Req: prost::Message + Send + Sync + 'static,
        Resp: prost::Message + Default + Send + Sync + 'static,
    {
        self.unary_within(path, req, self.options.call_timeout)
            .await
    }

    /// A unary call with its own deadline, sent as `grpc-timeout` so the node stops working on it when
    /// kiln stops waiting (`Endpoint::timeout` only bounds the wait here and sends no header). The
    /// local bound is a little longer, so the node's own `DeadlineExceeded` normally arrives first.
    async fn unary_within<Req, Resp>(
        &self,
        path: &'static str,
        req: Req,
        deadline: Duration,
    ) -> Result<Resp, TalosError>
    where
        Req: prost::Message + Send + Sync + 'static,
        Resp: prost::Message + Default + Send + Sync + 'static,
    {
        let addr = self.addr;
        let call = async {
            let mut grpc = self.grpc();
            grpc.ready().await.map_err(|e| TalosError::Unreachable {
                addr,
                message: e.to_string(),
            })?;
            let codec = tonic_prost::ProstCodec::<Req, Resp>::default();
            grpc.unary(
                with_deadline(req, deadline),
                PathAndQuery::from_static(path),
                codec,
            )
            .await
            .map(tonic::Response::into_inner)
            .map_err(|s| TalosError::status(addr, path, s))
        };
        let result = tokio::time::timeout(deadline + LOCAL_SLACK, call)
            .instrument(self.span(path))
            .await
            .map_err(|_| TalosError::Timeout {
                addr,
                method: path,
                after: deadline,
            })
            .and_then(|r| r);
        crate::metrics::request(
            crate::metrics::System::Talos,
            grpc_method(path),
            result.is_ok(),
        );
        result
    }

    fn span(&self, method: &'static str) -> tracing::Span {
        tracing::debug_span!("talos_call", node = %self.addr, method, mode = ?self.mode)
    }

    async fn server_stream<Req, Resp>(
        &self,
        path: &'static str,
        req: Req,
    ) -> Result<Vec<Resp>, TalosError>
    where
        Req: prost::Message + Send + Sync + 'static,
        Resp: prost::Message + Default + Send + Sync + 'static,
    {
        self.server_stream_within(path, req, self.options.call_timeout)
            .await
    }

    /// A server stream read to its end within `deadline` (sent as `grpc-timeout` too).
    async fn server_stream_within<Req, Resp>(
        &self,
        path: &'static str,
        req: Req,
        deadline: Duration,
    ) -> Result<Vec<Resp>, TalosError>
    where
        Req: prost::Message + Send + Sync + 'static,
        Resp: prost::Message + Default + Send + Sync + 'static,
    {
        let addr = self.addr;
        let call = async {
            let mut grpc = self.grpc();
            grpc.ready().await.map_err(|e| TalosError::Unreachable {
                addr,
                message: e.to_string(),
            })?;
            let codec = tonic_prost::ProstCodec::<Req, Resp>::default();
            let mut stream = grpc
                .server_streaming(
                    with_deadline(req, deadline),
                    PathAndQuery::from_static(path),
                    codec,
                )
                .await
                .map_err(|s| TalosError::status(addr, path, s))?
                .into_inner();
            let mut items = Vec::new();
            while let Some(item) = stream
                .message()
                .await
                .map_err(|s| TalosError::status(addr, path, s))?
            {
                items.push(item);
            }
            Ok(items)
        };
        let result = tokio::time::timeout(deadline + LOCAL_SLACK, call)
            .instrument(self.span(path))
            .await
            .map_err(|_| TalosError::Timeout {
                addr,
                method: path,
                after: deadline,
            })
            .and_then(|r| r);
        crate::metrics::request(
            crate::metrics::System::Talos,
            grpc_method(path),
            result.is_ok(),
        );
        result
    }

    /// Concatenates `common.Data` chunks; a chunk whose metadata carries an error ends the read with it.
    async fn data_stream<Req>(&self, path: &'static str, req: Req) -> Result<Vec<u8>, TalosError>
    where
        Req: prost::Message + Send + Sync + 'static,
    {
        let chunks: Vec<Data> = self.server_stream(path, req).await?;
        let mut out = Vec::new();
        for chunk in chunks {
            check_metadata(self.addr, path, chunk.metadata.as_ref())?;
            out.extend_from_slice(&chunk.bytes);
        }
        Ok(out)
    }

    fn single<T>(
        &self,
        method: &'static str,
        items: Vec<T>,
        meta: fn(&T) -> Option<&Metadata>,
    ) -> Result<T, TalosError> {
        let item = items.into_iter().next().ok_or(TalosError::EmptyReply {
            addr: self.addr,
            method,
        })?;
        check_metadata(self.addr, method, meta(&item))?;
        Ok(item)
    }

    pub async fn apply_configuration(
        &self,
        config: &[u8],
        mode: machine::ApplyMode,
        dry_run: bool,
    ) -> Result<ApplyOutcome, TalosError> {
        let req = machine::ApplyConfigurationRequest {
            data: config.to_vec(),
            mode: mode as i32,
            dry_run,
            try_mode_timeout: None,
        };
        let resp: machine::ApplyConfigurationResponse =
            self.unary(paths::APPLY_CONFIGURATION, req).await?;
        let item = self.single(paths::APPLY_CONFIGURATION, resp.messages, |m| {
            m.metadata.as_ref()
        })?;
        Ok(ApplyOutcome {
            mode: machine::ApplyMode::try_from(item.mode).unwrap_or(machine::ApplyMode::Reboot),
            mode_details: item.mode_details,
            warnings: item.warnings,
        })
    }

    pub async fn bootstrap(&self, recover_etcd: bool) -> Result<BootstrapOutcome, TalosError> {
        let req = machine::BootstrapRequest {
            recover_etcd,
            recover_skip_hash_check: false,
        };
        match self
            .unary::<_, machine::BootstrapResponse>(paths::BOOTSTRAP, req)
            .await
        {
            Ok(resp) => {
                self.single(paths::BOOTSTRAP, resp.messages, |m| m.metadata.as_ref())?;
                Ok(BootstrapOutcome::Bootstrapped)
            }
            Err(e) if e.code() == Some(tonic::Code::AlreadyExists) => {
                Ok(BootstrapOutcome::AlreadyBootstrapped)
            }
            Err(e) => Err(e),
        }
    }

    /// The admin kubeconfig: the streamed gzip tar is unpacked and its single `kubeconfig` file returned.
    pub async fn kubeconfig(&self) -> Result<Secret, TalosError> {
        let archive = self.data_stream(paths::KUBECONFIG, ()).await?;
        extract_kubeconfig(&archive).map_err(|message| TalosError::Malformed {
            addr: self.addr,
            method: paths::KUBECONFIG,
            message,
        })
    }

    pub async fn version(&self) -> Result<VersionReport, TalosError> {
        let resp: machine::VersionResponse = self.unary(paths::VERSION, ()).await?;
        let item = self.single(paths::VERSION, resp.messages, |m| m.metadata.as_ref())?;
        Ok(VersionReport {
            tag: item.version.map(|v| v.tag).unwrap_or_default(),
            platform: item.platform.map(|p| p.name).unwrap_or_default(),
        })
    }

    /// Legacy `MachineService.Upgrade` (served by every version kiln supports). `preserve` keeps the
    /// EPHEMERAL partition, where Longhorn keeps its data.
    pub async fn upgrade(&self, image: &str, preserve: bool) -> Result<String, TalosError> {
        let req = machine::UpgradeRequest {
            image: image.to_owned(),
            preserve,
            ..Default::default()
        };
        let resp: machine::UpgradeResponse = self.unary(paths::UPGRADE, req).await?;
        let item = self.single(paths::UPGRADE, resp.messages, |m| m.metadata.as_ref())?;
        Ok(item.ack)
    }

    /// `ImageService.Pull` (Talos ≥ v1.13) into the system containerd, as `talosctl upgrade` does
    /// before it installs; returns the pulled image's name, which the install then names.
    pub async fn image_pull(&self, image: &str, deadline: Duration) -> Result<String, TalosError> {
        use super::proto::upgrade::{
            ImageServicePullRequest, ImageServicePullResponse, PullResponse,
        };
        let req = ImageServicePullRequest {
            containerd: Some(super::proto::common::ContainerdInstance::system()),
            image_ref: image.to_owned(),
        };
        let items: Vec<ImageServicePullResponse> = self
            .server_stream_within(paths::IMAGE_PULL, req, deadline)
            .await?;
        items
            .into_iter()
            .find_map(|i| match i.response {
                Some(PullResponse::Name(name)) => Some(name),
                _ => None,
            })
            .ok_or(TalosError::EmptyReply {
                addr: self.addr,
                method: paths::IMAGE_PULL,
            })
    }

    /// `LifecycleService.Upgrade` (Talos ≥ v1.13): installs `image` to the node's disk and streams
    /// the installer's progress; it does not reboot. An exit code other than 0 is a failure although
    /// the call itself succeeded (talosctl v1.13.9 `upgradeInternal`); the messages come with it.
    pub async fn lifecycle_upgrade(
        &self,
        image: &str,
        deadline: Duration,
    ) -> Result<Vec<String>, TalosError> {
        use super::proto::upgrade::{
            InstallArtifactsSource, InstallProgress, LifecycleServiceUpgradeRequest,
            LifecycleServiceUpgradeResponse,
        };
        let req = LifecycleServiceUpgradeRequest {
            containerd: Some(super::proto::common::ContainerdInstance::system()),
            source: Some(InstallArtifactsSource {
                image_name: image.to_owned(),
            }),
        };
        let items: Vec<LifecycleServiceUpgradeResponse> = self
            .server_stream_within(paths::LIFECYCLE_UPGRADE, req, deadline)
            .await?;
        let mut messages = Vec::new();
        let mut exit = None;
        for item in items {
            match item.progress.and_then(|p| p.response) {
                Some(InstallProgress::Message(m)) => messages.push(m),
                Some(InstallProgress::ExitCode(code)) => exit = Some(code),
                None => {}
            }
        }
        match exit {
            Some(0) => Ok(messages),
            Some(exit_code) => Err(TalosError::InstallFailed {
                addr: self.addr,
                exit_code,
                messages: messages.join("; "),
            }),
            None => Err(TalosError::Malformed {
                addr: self.addr,
                method: paths::LIFECYCLE_UPGRADE,
                message: format!(
                    "the stream ended without an exit code (last: {:?})",
                    messages.last()
                ),
            }),
        }
    }

    /// A graceful reset leaves etcd first (on a control plane) and runs asynchronously after the reply.
    pub async fn reset(&self, graceful: bool, reboot: bool) -> Result<String, TalosError> {
        let req = machine::ResetRequest {
            graceful,
            reboot,
            ..Default::default()
        };
        let resp: machine::ResetResponse = self.unary(paths::RESET, req).await?;
        Ok(self
            .single(paths::RESET, resp.messages, |m| m.metadata.as_ref())?
            .actor_id)
    }

    /// Reset wiping only the named system partitions (`ResetRequest.system_partitions_to_wipe`, as
    /// `talosctl reset --system-labels-to-wipe`); the others, STATE with the config, stay.
    pub async fn reset_wiping(
        &self,
        graceful: bool,
        reboot: bool,
        labels: &[&str],
    ) -> Result<String, TalosError> {
        let req = machine::ResetRequest {
            graceful,
            reboot,
            system_partitions_to_wipe: labels
                .iter()
                .map(|l| machine::ResetPartitionSpec {
                    label: (*l).to_owned(),
                    wipe: true,
                })
                .collect(),
            ..Default::default()
        };
        let resp: machine::ResetResponse = self.unary(paths::RESET, req).await?;
        Ok(self
            .single(paths::RESET, resp.messages, |m| m.metadata.as_ref())?
            .actor_id)
    }

    pub async fn reboot(&self) -> Result<String, TalosError> {
        let req = machine::RebootRequest {
            mode: machine::RebootMode::Default as i32,
        };
        let resp: machine::RebootResponse = self.unary(paths::REBOOT, req).await?;
        Ok(self
            .single(paths::REBOOT, resp.messages, |m| m.metadata.as_ref())?
            .actor_id)
    }

    pub async fn etcd_member_list(&self) -> Result<Vec<machine::EtcdMember>, TalosError> {
        self.etcd_member_list_within(self.options.call_timeout)
            .await
    }

    /// Before bootstrap a real node's etcd client waits for a member until the request's deadline
    /// (TALOS-FACTS §8), so a probe passes a short one.
    pub async fn etcd_member_list_within(
        &self,
        deadline: Duration,
    ) -> Result<Vec<machine::EtcdMember>, TalosError> {
        let req = machine::EtcdMemberListRequest { query_local: false };
        let resp: machine::EtcdMemberListResponse = self
            .unary_within(paths::ETCD_MEMBER_LIST, req, deadline)
            .await?;
        Ok(self
            .single(paths::ETCD_MEMBER_LIST, resp.messages, |m| {
                m.metadata.as_ref()
            })?
            .members)
    }

    pub async fn etcd_remove_member_by_id(&self, member_id: u64) -> Result<(), TalosError> {
        let req = machine::EtcdRemoveMemberByIdRequest { member_id };
        let resp: machine::EtcdRemoveMemberByIdResponse =
            self.unary(paths::ETCD_REMOVE_MEMBER_BY_ID, req).await?;
        self.single(paths::ETCD_REMOVE_MEMBER_BY_ID, resp.messages, |m| {
            m.metadata.as_ref()
        })?;
        Ok(())
    }

    /// The node's etcd database as it streams (1 KiB chunks on real Talos: `pkg/chunker/stream`
    /// v1.13.9, default size 1024), the SHA-256 trailer of etcd's maintenance API included.
    ///
    /// No deadline covers the whole stream (talosctl's `etcd snapshot` sets none, and a large
    /// database takes long); `call_timeout` bounds the opening and each wait for the next chunk, so
    /// a stalled stream errors and a long healthy one does not.
    pub async fn etcd_snapshot(&self) -> Result<ByteStream, TalosError> {
        let addr = self.addr;
        let path = paths::ETCD_SNAPSHOT;
        let idle = self.options.call_timeout;
        let open = async {
            let mut grpc = self.grpc();
            grpc.ready().await.map_err(|e| TalosError::Unreachable {
                addr,
                message: e.to_string(),
            })?;
            let codec = tonic_prost::ProstCodec::<machine::EtcdSnapshotRequest, Data>::default();
            grpc.server_streaming(
                tonic::Request::new(machine::EtcdSnapshotRequest {}),
                PathAndQuery::from_static(path),
                codec,
            )
            .await
            .map(tonic::Response::into_inner)
            .map_err(|s| TalosError::status(addr, path, s))
        };
        let opened = tokio::time::timeout(idle + LOCAL_SLACK, open)
            .instrument(self.span(path))
            .await
            .map_err(|_| TalosError::Timeout {
                addr,
                method: path,
                after: idle,
            })
            .and_then(|r| r);
        let inner = match opened {
            Ok(inner) => inner,
            Err(e) => {
                crate::metrics::request(crate::metrics::System::Talos, grpc_method(path), false);
                return Err(e);
            }
        };
        let chunks = futures::stream::unfold(Some(inner), move |state| async move {
            let mut inner = state?;
            let next = match tokio::time::timeout(idle, inner.message()).await {
                Err(_) => Err(TalosError::Timeout {
                    addr,
                    method: path,
                    after: idle,
                }),
                Ok(Err(s)) => Err(TalosError::status(addr, path, s)),
                Ok(Ok(None)) => {
                    crate::metrics::request(crate::metrics::System::Talos, grpc_method(path), true);
                    return None;
                }
                Ok(Ok(Some(data))) => check_metadata(addr, path, data.metadata.as_ref())
                    .map(|()| bytes::Bytes::from(data.bytes)),
            };
            match next {
                Ok(bytes) => Some((Ok(bytes), Some(inner))),
                Err(e) => {
                    crate::metrics::request(
                        crate::metrics::System::Talos,
                        grpc_method(path),
                        false,
                    );
                    Some((Err(e), None))
                }
            }
        });
        Ok(Box::pin(chunks))
    }

    /// Uploads a snapshot for a following `Bootstrap { recover_etcd: true }`, in 4 KiB chunks as
    /// talosctl does, reading `snapshot` as it goes.
    ///
    /// `call_timeout` bounds each wait for the node to take the next chunk and, once the source
    /// ends, its reply. A source that fails cancels the call (the stream is reset, not closed), so
    /// Talos's `EtcdRecover` (v1alpha1_server.go, v1.13.9) removes its partial file instead of
    /// keeping a truncated snapshot.
    pub async fn etcd_recover(&self, snapshot: UploadStream) -> Result<(), TalosError> {
        use futures::StreamExt;

        let addr = self.addr;
        let path = paths::ETCD_RECOVER;
        let idle = self.options.call_timeout;
        let last = Arc::new(Mutex::new(tokio::time::Instant::now()));
        let failed: Arc<Mutex<Option<std::io::Error>>> = Arc::new(Mutex::new(None));
        let abort = Arc::new(tokio::sync::Notify::new());
        let (l, f, a) = (last.clone(), failed.clone(), abort.clone());
        let chunks = rechunk(snapshot, UPLOAD_CHUNK)
            .then(move |item| {
                let (l, f, a) = (l.clone(), f.clone(), a.clone());
                async move {
                    *l.lock().expect("progress lock") = tokio::time::Instant::now();
                    match item {
                        Ok(bytes) => Some(Data {
                            metadata: None,
                            bytes: bytes.to_vec(),
                        }),
                        Err(e) => {
                            *f.lock().expect("failure lock") = Some(e);
                            a.notify_one();
                            // Never end: a clean end would tell the node the upload is whole.
                            futures::future::pending::<()>().await;
                            None::<Data>
                        }
                    }
                }
            })
            .chain(futures::stream::once({
                let l = last.clone();
                async move {
                    *l.lock().expect("progress lock") = tokio::time::Instant::now();
                    None::<Data>
                }
            }))
            .filter_map(futures::future::ready);
        let call = async {
            let mut grpc = self.grpc();
            grpc.ready().await.map_err(|e| TalosError::Unreachable {
                addr,
                message: e.to_string(),
            })?;
            let codec = tonic_prost::ProstCodec::<Data, machine::EtcdRecoverResponse>::default();
            grpc.client_streaming(
                tonic::Request::new(chunks),
                PathAndQuery::from_static(path),
                codec,
            )
            .await
            .map(tonic::Response::into_inner)
            .map_err(|s| TalosError::status(addr, path, s))
        };
        let call = call.instrument(self.span(path));
        tokio::pin!(call);
        let result = loop {
            let quiet_until = *last.lock().expect("progress lock") + idle;
            tokio::select! {
                r = &mut call => break r,
                () = abort.notified() => {
                    let e = failed.lock().expect("failure lock").take();
                    break Err(TalosError::Source {
                        addr,
                        method: path,
                        message: e.map_or_else(|| "failed".to_owned(), |e| e.to_string()),
                    });
                }
                () = tokio::time::sleep_until(quiet_until) => {
                    if *last.lock().expect("progress lock") + idle <= tokio::time::Instant::now() {
                        break Err(TalosError::Timeout { addr, method: path, after: idle });
                    }
                }
            }
        };
        crate::metrics::request(
            crate::metrics::System::Talos,
            grpc_method(path),
            result.is_ok(),
        );
        let resp = result?;
        self.single(path, resp.messages, |m| m.metadata.as_ref())?;
        Ok(())
    }

    pub async fn service_list(&self) -> Result<Vec<machine::ServiceInfo>, TalosError> {
        let resp: machine::ServiceListResponse = self.unary(paths::SERVICE_LIST, ()).await?;
        Ok(self
            .single(paths::SERVICE_LIST, resp.messages, |m| m.metadata.as_ref())?
            .services)
    }

    pub async fn cosi_get(
        &self,
        namespace: &str,
        r#type: &str,
        id: &str,
    ) -> Result<cosi::Resource, TalosError> {
        let req = cosi::GetRequest {
            namespace: namespace.to_owned(),
            r#type: r#type.to_owned(),
            id: id.to_owned(),
            options: Some(cosi::GetOptions {}),
        };
        let resp: cosi::GetResponse = self.unary(paths::COSI_GET, req).await?;
        resp.resource.ok_or(TalosError::EmptyReply {
            addr: self.addr,
            method: paths::COSI_GET,
        })
    }

    pub async fn cosi_list(
        &self,
        namespace: &str,
        r#type: &str,
    ) -> Result<Vec<cosi::Resource>, TalosError> {
        let req = cosi::ListRequest {
            namespace: namespace.to_owned(),
            r#type: r#type.to_owned(),
            options: Some(cosi::ListOptions {}),
        };
        let items: Vec<cosi::ListResponse> = self.server_stream(paths::COSI_LIST, req).await?;
        Ok(items.into_iter().filter_map(|r| r.resource).collect())
    }
}

fn check_metadata(
    addr: SocketAddr,
    method: &'static str,
    meta: Option<&Metadata>,
) -> Result<(), TalosError> {
    match meta {
        Some(m) if !m.error.is_empty() => Err(TalosError::NodeReported {
            addr,
            method,
            message: m.error.clone(),
        }),
        _ => Ok(()),
    }
}

/// Unpacks the gzip tar Talos streams for Kubeconfig; it holds exactly one file, `kubeconfig`.
pub fn extract_kubeconfig(archive: &[u8]) -> Result<Secret, String> {
    let mut tar = tar::Archive::new(flate2::read::GzDecoder::new(archive));
    let entries = tar.entries().map_err(|e| format!("not a gzip tar: {e}"))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| format!("bad tar entry: {e}"))?;
        let path = entry
            .path()
            .map_err(|e| format!("bad tar path: {e}"))?
            .into_owned();
        if path.as_os_str() == "kubeconfig" {
            let mut text = String::new();
            entry
                .read_to_string(&mut text)
                .map_err(|e| format!("kubeconfig is not UTF-8 text: {e}"))?;
            return Ok(Secret::new(text));
        }
    }
    Err("archive holds no `kubeconfig` file".into())
}

/// `Version` of `/machine.MachineService/Version`: a fixed label value.
fn grpc_method(path: &'static str) -> &'static str {
    path.rsplit('/').next().unwrap_or(path)
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        text.push_str(": ");
        text.push_str(&s.to_string());
        cur = s.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A TLS server on loopback that shows certificate A, then B, then A again, one per connection.
    async fn alternating_server() -> SocketAddr {
        let ip = std::net::IpAddr::from([127, 0, 0, 1]);
        let a = crate::sim::talos::pki::maintenance_server_config(ip).unwrap();
        let b = crate::sim::talos::pki::maintenance_server_config(ip).unwrap();
        let listener = tokio::net::TcpListener::bind((ip, 0)).await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            for config in [a.clone(), b, a] {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                tokio::spawn(async move {
                    if let Ok(tls) = tokio_rustls::TlsAcceptor::from(config).accept(tcp).await {
                        // Hold the connection open until the client drops it.
                        let mut tls = tls;
                        let _ = tokio::io::AsyncReadExt::read(&mut tls, &mut [0u8; 1]).await;
                    }
                });
            }
        });
        addr
    }

    #[tokio::test]
    async fn a_redial_meets_only_the_pinned_certificate() {
        let addr = alternating_server().await;
        let t = Duration::from_secs(5);
        let insecure = tls::insecure_client_config().unwrap();
        let first = dial(addr, insecure.clone(), t).await.unwrap();
        // What `connect` hands tonic's connector for an insecure client.
        let (pin, pinned) = redial_config(addr, Mode::Insecure, &first, insecure).unwrap();
        assert!(pin.is_some());
        let Err(err) = dial(addr, pinned.clone(), t).await else {
            panic!("another certificate at the same address was accepted");
        };
        assert!(
            matches!(&err, TalosError::Handshake { message, .. } if message.contains("not the pinned one")),
            "{err}"
        );
        dial(addr, pinned, t)
            .await
            .expect("the pinned certificate itself passes");
    }
}
