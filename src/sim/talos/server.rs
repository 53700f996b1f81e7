//! The simulator's wire side: per node, a TCP listener whose connections get the TLS of the node's
//! current phase, served by tonic over one tower service that routes by gRPC path.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::net::TcpListener;
use tonic::body::Body;
use tonic::server::Grpc;
use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};
use tonic::{Request, Response, Status, Streaming};

use super::fleet::Peer;
use super::{Shared, handlers};
use crate::talos::grpc::client::MAX_MESSAGE;
use crate::talos::grpc::proto::common::Data;
use crate::talos::grpc::proto::{machine, paths};

type HttpResponse = http::Response<Body>;
type BoxFuture = Pin<Box<dyn Future<Output = Result<HttpResponse, Infallible>> + Send>>;

/// One node's MachineService and COSI State.
#[derive(Clone)]
pub struct NodeService {
    pub shared: Arc<Shared>,
    pub addr: SocketAddr,
}

fn peer_of<T>(req: &Request<T>) -> Peer {
    let roles = req
        .extensions()
        .get::<TlsConnectInfo<TcpConnectInfo>>()
        .and_then(|info| info.peer_certs())
        .and_then(|certs| certs.first().map(super::pki::roles));
    Peer { roles }
}

fn codec<Enc, Dec>() -> Grpc<tonic_prost::ProstCodec<Enc, Dec>>
where
    Enc: prost::Message + Send + 'static,
    Dec: prost::Message + Default + Send + 'static,
{
    Grpc::new(tonic_prost::ProstCodec::default())
        .max_decoding_message_size(MAX_MESSAGE)
        .max_encoding_message_size(MAX_MESSAGE)
}

struct ApplyGuard {
    shared: Arc<Shared>,
    addr: SocketAddr,
}

impl ApplyGuard {
    fn take(shared: &Arc<Shared>, addr: SocketAddr) -> Result<Self, Status> {
        if !shared.applying.lock().expect("apply lock").insert(addr) {
            return Err(Status::failed_precondition(
                "another apply configuration is already in progress",
            ));
        }
        Ok(Self {
            shared: shared.clone(),
            addr,
        })
    }
}

impl Drop for ApplyGuard {
    fn drop(&mut self) {
        if let Ok(mut set) = self.shared.applying.lock() {
            set.remove(&self.addr);
        }
    }
}

impl NodeService {
    /// Delays and injected failures first (what a test asked for), then the method on the fleet state.
    async fn run<Req, Resp>(
        &self,
        method: &'static str,
        req: Request<Req>,
        f: impl FnOnce(&mut super::fleet::Fleet, &Req, &Peer) -> Result<Resp, Status>,
    ) -> Result<Resp, Status> {
        let peer = peer_of(&req);
        // Talos runs one ApplyConfiguration at a time per node (a TryLock since v1.12).
        let _apply = if method == "ApplyConfiguration" {
            Some(ApplyGuard::take(&self.shared, self.addr)?)
        } else {
            None
        };
        self.shared.before_call(self.addr, method).await?;
        let _span = tracing::debug_span!("sim_talos", node = %self.addr, method).entered();
        let (result, to_start) = {
            let mut fleet = self.shared.fleet.lock().expect("fleet lock");
            fleet.settle_learners();
            let result = f(&mut fleet, req.get_ref(), &peer);
            if let (Err(status), "ApplyConfiguration") = (&result, method) {
                // One line per refusal: tests count them to prove kiln does not retry a refused config.
                tracing::info!(node = %self.addr, code = ?status.code(), "ApplyConfiguration refused");
            }
            super::kube::sync(&mut fleet);
            (
                result,
                (
                    std::mem::take(&mut fleet.kube_to_start),
                    std::mem::take(&mut fleet.reboots),
                ),
            )
        };
        let (to_start, reboots) = to_start;
        for cluster in to_start {
            super::kube::ensure_started(&self.shared, &cluster);
        }
        for (addr, delay) in reboots {
            super::reboot(&self.shared, addr, delay);
        }
        result
    }

    fn unary<Req, Resp, F>(self, req: http::Request<Body>, method: &'static str, f: F) -> BoxFuture
    where
        Req: prost::Message + Default + Send + Sync + 'static,
        Resp: prost::Message + Send + Sync + 'static,
        F: FnOnce(&mut super::fleet::Fleet, &Req, &Peer) -> Result<Resp, Status> + Send + 'static,
    {
        Box::pin(async move {
            let mut f = Some(f);
            let svc = tower::service_fn(move |r: Request<Req>| {
                let this = self.clone();
                let f = f.take();
                async move {
                    let f = f.ok_or_else(|| Status::internal("unary handler called twice"))?;
                    this.run(method, r, f).await.map(Response::new)
                }
            });
            Ok(codec::<Resp, Req>().unary(svc, req).await)
        })
    }

    fn streaming<Req, Resp, F>(
        self,
        req: http::Request<Body>,
        method: &'static str,
        f: F,
    ) -> BoxFuture
    where
        Req: prost::Message + Default + Send + Sync + 'static,
        Resp: prost::Message + Send + Sync + 'static,
        F: FnOnce(&mut super::fleet::Fleet, &Req, &Peer) -> Result<Vec<Resp>, Status>
            + Send
            + 'static,
    {
        Box::pin(async move {
            let mut f = Some(f);
            let svc = tower::service_fn(move |r: Request<Req>| {
                let this = self.clone();
                let f = f.take();
                async move {
                    let f = f.ok_or_else(|| Status::internal("streaming handler called twice"))?;
                    let items = this.run(method, r, f).await?;
                    let pace = this.shared.stream_pace(method);
                    let stream = futures::StreamExt::then(
                        tokio_stream::iter(items.into_iter().enumerate()),
                        move |(i, item)| async move {
                            if let Some((pause, stall_after)) = pace {
                                if stall_after.is_some_and(|n| i >= n) {
                                    std::future::pending::<()>().await;
                                }
                                tokio::time::sleep(pause).await;
                            }
                            Ok::<Resp, Status>(item)
                        },
                    );
                    Ok::<_, Status>(Response::new(Box::pin(stream)))
                }
            });
            Ok(codec::<Resp, Req>().server_streaming(svc, req).await)
        })
    }

    /// EtcdMemberList may wait for an etcd that is not there: until the caller's `grpc-timeout`, then
    /// `DeadlineExceeded` as grpc-go reports an expired context; without a deadline, until the caller
    /// goes away (see `handlers::etcd_member_list`).
    fn etcd_member_list(self, req: http::Request<Body>) -> BoxFuture {
        let deadline = grpc_timeout(req.headers());
        let addr = self.addr;
        Box::pin(async move {
            let svc = tower::service_fn(move |r: Request<machine::EtcdMemberListRequest>| {
                let this = self.clone();
                async move {
                    let answer = this
                        .run("EtcdMemberList", r, |f, _, p| {
                            handlers::etcd_member_list(f, addr, p)
                        })
                        .await?;
                    match answer {
                        handlers::MemberListAnswer::Members(m) => Ok(Response::new(m)),
                        handlers::MemberListAnswer::WaitForDeadline => {
                            // Logged so tests can see the caller's deadline arrived with the call.
                            tracing::info!(node = %addr, grpc_timeout = ?deadline, "EtcdMemberList waits for etcd until the caller's deadline");
                            match deadline {
                                // A hair early: tonic's own grpc-timeout layer would otherwise answer
                                // first with `Cancelled`, where grpc-go says `DeadlineExceeded`.
                                Some(d) => {
                                    tokio::time::sleep(d.saturating_sub(DEADLINE_MARGIN)).await;
                                    Err(Status::deadline_exceeded("context deadline exceeded"))
                                }
                                None => std::future::pending().await,
                            }
                        }
                    }
                }
            });
            Ok(
                codec::<machine::EtcdMemberListResponse, machine::EtcdMemberListRequest>()
                    .unary(svc, req)
                    .await,
            )
        })
    }

    fn etcd_recover(self, req: http::Request<Body>) -> BoxFuture {
        Box::pin(async move {
            let svc = tower::service_fn(move |r: Request<Streaming<Data>>| {
                let this = self.clone();
                async move {
                    let peer = peer_of(&r);
                    let mut stream = r.into_inner();
                    let mut snapshot = Vec::new();
                    while let Some(chunk) = stream.message().await? {
                        snapshot.extend_from_slice(&chunk.bytes);
                    }
                    this.shared.before_call(this.addr, "EtcdRecover").await?;
                    let mut fleet = this.shared.fleet.lock().expect("fleet lock");
                    handlers::etcd_recover(&mut fleet, this.addr, &peer, snapshot)
                        .map(Response::new)
                }
            });
            Ok(codec::<machine::EtcdRecoverResponse, Data>()
                .client_streaming(svc, req)
                .await)
        })
    }
}

impl tower::Service<http::Request<Body>> for NodeService {
    type Response = HttpResponse;
    type Error = Infallible;
    type Future = BoxFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        let this = self.clone();
        let addr = self.addr;
        let validator = self.shared.validator.clone();
        match req.uri().path() {
            paths::APPLY_CONFIGURATION => this.unary(req, "ApplyConfiguration", move |f, r, p| {
                handlers::apply_configuration(f, validator.as_ref(), addr, p, r)
            }),
            paths::BOOTSTRAP => this.unary(req, "Bootstrap", move |f, r, p| {
                handlers::bootstrap(f, addr, p, r)
            }),
            paths::KUBECONFIG => this.streaming(req, "Kubeconfig", move |f, _: &(), p| {
                handlers::kubeconfig(f, addr, p)
            }),
            paths::VERSION => this.unary(req, "Version", move |f, _: &(), p| {
                handlers::version(f, addr, p)
            }),
            paths::UPGRADE => this.unary(req, "Upgrade", move |f, r, p| {
                handlers::upgrade(f, addr, p, r)
            }),
            paths::RESET => this.unary(req, "Reset", move |f, r, p| handlers::reset(f, addr, p, r)),
            paths::REBOOT => this.unary(req, "Reboot", move |f, r, p| {
                super::upgrade::reboot(f, addr, p, r)
            }),
            paths::IMAGE_PULL => this.streaming(req, "Pull", move |f, r, p| {
                super::upgrade::image_pull(f, addr, p, r)
            }),
            paths::LIFECYCLE_UPGRADE => this.streaming(req, "LifecycleUpgrade", move |f, r, p| {
                super::upgrade::lifecycle_upgrade(f, addr, p, r)
            }),
            paths::ETCD_MEMBER_LIST => this.etcd_member_list(req),
            paths::ETCD_REMOVE_MEMBER_BY_ID => {
                this.unary(req, "EtcdRemoveMemberByID", move |f, r, p| {
                    handlers::etcd_remove_member_by_id(f, addr, p, r)
                })
            }
            paths::ETCD_SNAPSHOT => this.streaming(
                req,
                "EtcdSnapshot",
                move |f, _: &machine::EtcdSnapshotRequest, p| handlers::etcd_snapshot(f, addr, p),
            ),
            paths::ETCD_RECOVER => this.etcd_recover(req),
            paths::SERVICE_LIST => this.unary(req, "ServiceList", move |f, _: &(), p| {
                handlers::service_list(f, addr, p)
            }),
            paths::COSI_GET => {
                this.unary(req, "Get", move |f, r, p| handlers::cosi_get(f, addr, p, r))
            }
            paths::COSI_LIST => this.streaming(req, "List", move |f, r, p| {
                handlers::cosi_list(f, addr, p, r)
            }),
            other => {
                let status = Status::unimplemented(format!("method {other} is not simulated"));
                Box::pin(async move { Ok(status.into_http()) })
            }
        }
    }
}

const DEADLINE_MARGIN: std::time::Duration = std::time::Duration::from_millis(50);

/// The `grpc-timeout` header (gRPC over HTTP/2: at most 8 digits and a unit of H, M, S, m, u or n).
pub fn grpc_timeout(headers: &http::HeaderMap) -> Option<std::time::Duration> {
    use std::time::Duration;
    let v = headers.get("grpc-timeout")?.to_str().ok()?;
    let (digits, unit) = v.split_at(v.len().checked_sub(1)?);
    if digits.is_empty() || digits.len() > 8 {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n * 3600),
        "M" => Duration::from_secs(n * 60),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// Accepts connections for one node. Each connection gets the TLS of the node's phase at accept time
/// (maintenance: self-signed; configured: mTLS from its OS CA; off: dropped). Runs until its task is
/// aborted (the simulator's handle does that on drop).
pub async fn serve(
    listener: TcpListener,
    service: NodeService,
) -> Result<(), tonic::transport::Error> {
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    let shared = service.shared.clone();
    let addr = service.addr;
    let acceptor = tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                // A listener shut down at power-off fails every accept until its task is aborted:
                // wait instead of spinning a worker thread meanwhile.
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                continue;
            };
            let tls = shared.fleet.lock().expect("fleet lock").tls_for(addr);
            let Some(tls) = tls else { continue };
            let tx = tx.clone();
            tokio::spawn(async move {
                if let Ok(stream) = tokio_rustls::TlsAcceptor::from(tls).accept(tcp).await {
                    let _ = tx.send(Ok::<_, std::io::Error>(stream)).await;
                }
            });
        }
    });
    // Abort the accept loop with the server, whichever way this future ends.
    struct AbortOnDrop(tokio::task::JoinHandle<()>);
    impl Drop for AbortOnDrop {
        fn drop(&mut self) {
            self.0.abort();
        }
    }
    let _guard = AbortOnDrop(acceptor);
    let incoming = tokio_stream::wrappers::ReceiverStream::new(rx);
    tonic::transport::Server::builder()
        .serve_with_incoming(service, incoming)
        .await
}
