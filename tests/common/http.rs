//! Hub servers for the tests: a `HubServer` on 127.0.0.1 with an ephemeral
//! port, in this process, stopped when dropped; and the transport a suite
//! runs over.

use std::sync::Arc;

use sync_http::{HttpBackend, HubServer};
use tidesync::hub::{Hub, SqlHub};

use super::BoxError;

/// How a device reaches the hub in a trial.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    /// The device opens the hub database itself.
    Direct,
    /// Through a hub server over HTTP, as one user.
    Http,
}

impl Transport {
    pub const ALL: [Transport; 2] = [Transport::Direct, Transport::Http];

    /// The suffix of a trial's name (`""` for direct, the suites' names
    /// unchanged).
    pub fn suffix(self) -> &'static str {
        match self {
            Transport::Direct => "",
            Transport::Http => "::http",
        }
    }

    /// `hub` as a device reaches it over this transport. Over HTTP a
    /// server is started on it (serving undeclared tables as shared, the
    /// suites' entities declare no owners) and kept running as long as
    /// the returned hub lives; the device signs in as `user`.
    pub async fn reach(self, hub: SqlHub, user: &str) -> Result<Arc<dyn Hub>, BoxError> {
        match self {
            Transport::Direct => Ok(Arc::new(hub)),
            Transport::Http => {
                let server = TestServer::start(
                    HubServer::new(hub)
                        .await?
                        .share_undeclared(true)
                        // The suites make some hub tables by hand
                        // (constraints the devices' tables lack).
                        .adopt_existing_tables(true),
                )
                .await?;
                Ok(Arc::new(server.device(user).await?))
            }
        }
    }
}

/// A hub server in this process on an ephemeral port of 127.0.0.1.
pub struct TestServer {
    pub url: String,
    pub server: HubServer,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
}

impl TestServer {
    /// Start `server`.
    pub async fn start(server: HubServer) -> Result<Arc<TestServer>, BoxError> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://{}", listener.local_addr()?);
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(server.clone().serve(listener, async {
            let _ = stopped.await;
        }));
        Ok(Arc::new(TestServer {
            url,
            server,
            stop: Some(stop),
            task: Some(task),
        }))
    }

    /// A new token for `user`.
    pub async fn token(&self, user: &str) -> Result<String, BoxError> {
        Ok(self.server.tokens().add(user).await?)
    }

    /// A device's backend signed in as `user` (a new token), which keeps
    /// this server running while it lives.
    pub async fn device(self: &Arc<Self>, user: &str) -> Result<Device, BoxError> {
        let token = self.token(user).await?;
        Ok(Device {
            backend: HttpBackend::new(&self.url, token)?,
            _server: self.clone(),
        })
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// An `HttpBackend` that keeps its test server alive.
pub struct Device {
    pub backend: HttpBackend,
    _server: Arc<TestServer>,
}

#[async_trait::async_trait]
impl Hub for Device {
    async fn install(
        &self,
        tables: &[tidesync::TableSpec],
    ) -> tidesync::Result<tidesync::hub::HubInfo> {
        self.backend.install(tables).await
    }
    async fn push(&self, batch: &[tidesync::Change]) -> tidesync::Result<tidesync::hub::PushAck> {
        self.backend.push(batch).await
    }
    async fn standing(
        &self,
        origin: tidesync::NodeId,
        at: Option<tidesync::hub::Cursor>,
    ) -> tidesync::Result<tidesync::hub::Standing> {
        self.backend.standing(origin, at).await
    }
    async fn pull(
        &self,
        cursor: tidesync::hub::Cursor,
        limit: u64,
    ) -> tidesync::Result<tidesync::hub::PullBatch> {
        self.backend.pull(cursor, limit).await
    }
    async fn pull_excluding(
        &self,
        cursor: tidesync::hub::Cursor,
        limit: u64,
        origin: tidesync::NodeId,
    ) -> tidesync::Result<tidesync::hub::PullBatch> {
        self.backend.pull_excluding(cursor, limit, origin).await
    }
    async fn pull_states(
        &self,
        cursor: tidesync::hub::Cursor,
        limit: u64,
        origin: tidesync::NodeId,
    ) -> tidesync::Result<tidesync::hub::StatePage> {
        self.backend.pull_states(cursor, limit, origin).await
    }
    async fn snapshot(
        &self,
        after: Option<String>,
        limit: u64,
    ) -> tidesync::Result<(tidesync::hub::Cursor, tidesync::hub::SnapshotPage)> {
        self.backend.snapshot(after, limit).await
    }
    async fn snapshot_excluding(
        &self,
        after: Option<String>,
        limit: u64,
        origin: tidesync::NodeId,
    ) -> tidesync::Result<(tidesync::hub::Cursor, tidesync::hub::SnapshotPage)> {
        self.backend.snapshot_excluding(after, limit, origin).await
    }
}

/// A load balancer in front of hub servers, as a deployment of several
/// has: a device reaches it at one URL, and it forwards each request to
/// the server [`Balancer::switch`] chose last, counting the pushes each
/// one answered. Devices keep one backend (and what it installed) however
/// the servers behind take turns.
pub struct Balancer {
    pub url: String,
    state: Arc<BalancerState>,
    task: tokio::task::JoinHandle<()>,
}

struct BalancerState {
    upstreams: Vec<String>,
    current: std::sync::atomic::AtomicUsize,
    pushes: Vec<std::sync::atomic::AtomicUsize>,
    client: reqwest::Client,
}

impl Balancer {
    /// A balancer in front of `upstreams` (server URLs), starting at the
    /// first.
    pub async fn start(upstreams: Vec<String>) -> Result<Balancer, BoxError> {
        use axum::extract::{Request, State};
        use axum::response::{IntoResponse, Response};

        async fn forward(State(state): State<Arc<BalancerState>>, req: Request) -> Response {
            use std::sync::atomic::Ordering;
            let i = state.current.load(Ordering::SeqCst);
            if req.uri().path().ends_with("/push") {
                state.pushes[i].fetch_add(1, Ordering::SeqCst);
            }
            let url = format!("{}{}", state.upstreams[i], req.uri());
            let (parts, body) = req.into_parts();
            let Ok(body) = axum::body::to_bytes(body, usize::MAX).await else {
                return axum::http::StatusCode::BAD_GATEWAY.into_response();
            };
            let mut out = state.client.request(parts.method, url).body(body);
            for (name, value) in &parts.headers {
                if name != axum::http::header::HOST {
                    out = out.header(name, value);
                }
            }
            let Ok(answer) = out.send().await else {
                return axum::http::StatusCode::BAD_GATEWAY.into_response();
            };
            let status = answer.status();
            let headers = answer.headers().clone();
            let Ok(bytes) = answer.bytes().await else {
                return axum::http::StatusCode::BAD_GATEWAY.into_response();
            };
            let mut response = Response::new(axum::body::Body::from(bytes));
            *response.status_mut() = status;
            *response.headers_mut() = headers;
            response
        }

        let state = Arc::new(BalancerState {
            pushes: upstreams.iter().map(|_| Default::default()).collect(),
            upstreams,
            current: Default::default(),
            // Answers as the servers sent them: compressed bodies stay so.
            client: reqwest::Client::builder().no_proxy().build()?,
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://{}", listener.local_addr()?);
        let app = axum::Router::new()
            .fallback(forward)
            .with_state(state.clone());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Balancer { url, state, task })
    }

    /// Send the next requests to the next server.
    pub fn switch(&self) {
        use std::sync::atomic::Ordering;
        let n = self.state.upstreams.len();
        let _ = self
            .state
            .current
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |c| Some((c + 1) % n));
    }

    /// How many pushes each server answered.
    pub fn pushes(&self) -> Vec<usize> {
        self.state
            .pushes
            .iter()
            .map(|p| p.load(std::sync::atomic::Ordering::SeqCst))
            .collect()
    }
}

impl Drop for Balancer {
    fn drop(&mut self) {
        self.task.abort();
    }
}
