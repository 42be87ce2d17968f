//! [`HttpBackend`]: a hub reached over HTTP(S), for devices that must not
//! hold database credentials.

use std::sync::{Mutex, RwLock};
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;
use sync_core::hub::{Cursor, Hub, HubInfo, PullBatch, PushAck, SnapshotPage, Standing, StatePage};
use sync_core::{Change, Error, NodeId, Result, TableSpec};

use crate::wire::{self, ErrorBody, PROTOCOL_VERSION, VERSION_HEADER};

/// A hub behind a `tidesync-hub` server (or any server built on
/// [`HubServer`](crate::HubServer)), reached over HTTP or HTTPS with a
/// bearer token. It implements [`Hub`], so a `SyncEngine`, its background
/// task and every conflict policy work over it unchanged.
///
/// A connection error or a timeout is [`Error::Offline`]: the engine's
/// backoff retries it. A refused token is [`Error::Unauthorized`], a
/// server of another protocol version [`Error::Protocol`]; both recur until
/// something changes. Bodies over the server's size limit are split: a
/// push the server finds too large goes again in halves.
///
/// ```no_run
/// # async fn run(replica: sync_core::Replica) -> sync_core::Result<()> {
/// // In an application: `tidesync::http::HttpBackend` (feature `http-client`).
/// use sync_http::HttpBackend;
///
/// let hub = HttpBackend::new("https://hub.example.com", "tsk_...")?;
/// let engine = sync_core::SyncEngine::new(replica, std::sync::Arc::new(hub));
/// engine.sync_now().await?;
/// # Ok(()) }
/// ```
pub struct HttpBackend {
    sender: Sender,
    base: String,
    /// The bearer token; [`HttpBackend::set_token`] replaces it.
    token: RwLock<String>,
    /// The tables of the last install, installed again when a server
    /// that has not seen them asks for it (`409 install-required`), and
    /// the id the server gave them.
    tables: Mutex<Option<(Vec<TableSpec>, String)>>,
    /// The page after the last one the engine asked for, asked for
    /// already (see [`Ahead`]).
    ahead: Mutex<Option<Ahead>>,
    /// Set when the server has no `states` endpoint (an earlier release):
    /// pulls ask for changes.
    no_states: std::sync::atomic::AtomicBool,
}

/// What sends requests and receives their answers: owned, so that a
/// read-ahead sends from a task of its own.
#[derive(Clone)]
struct Sender {
    client: reqwest::Client,
    base: String,
}

/// An answer as it arrived, not decoded yet.
struct Arrived {
    url: String,
    status: reqwest::StatusCode,
    zstd: bool,
    body: bytes::Bytes,
    /// The next page, as the answer names it ([`wire::NEXT_HEADER`]).
    next: Option<String>,
}

impl Sender {
    /// Send `json` (compressed when large) to `endpoint` with `token`.
    async fn send(&self, endpoint: &str, json: Vec<u8>, token: String) -> Result<Arrived> {
        let (bytes, compressed) = wire::encode(json);
        let url = format!("{}{}", self.base, wire::path(endpoint));
        let mut req = self
            .client
            .post(&url)
            .bearer_auth(token)
            .header(VERSION_HEADER, PROTOCOL_VERSION.to_string())
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header(reqwest::header::ACCEPT_ENCODING, "zstd");
        if compressed {
            req = req.header(reqwest::header::CONTENT_ENCODING, "zstd");
        }
        let resp = req
            .body(bytes)
            .send()
            .await
            .map_err(|e| offline(&url, &e))?;
        let status = resp.status();
        let headers = resp.headers();
        let zstd = headers
            .get(reqwest::header::CONTENT_ENCODING)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"zstd"));
        let next = headers
            .get(wire::NEXT_HEADER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let body = resp.bytes().await.map_err(|e| offline(&url, &e))?;
        Ok(Arrived {
            url,
            status,
            zstd,
            body,
            next,
        })
    }
}

impl Arrived {
    /// An answer that another try may not get: the statuses
    /// [`answer_error`] takes for offline.
    fn passing_failure(&self) -> bool {
        matches!(self.status.as_u16(), 408 | 429 | 500..=599)
    }

    /// The answer decoded, or the error it stands for.
    fn decode<A: DeserializeOwned>(self) -> Result<A> {
        let url = &self.url;
        let decompressed;
        // Read where it arrived unless it was compressed: no copy.
        let body: &[u8] = if self.zstd {
            decompressed = wire::decompress(&self.body, MAX_ANSWER).map_err(|e| {
                Error::Protocol(format!(
                    "{url}: an answer that is not zstd, or over {MAX_ANSWER} bytes: {e}"
                ))
            })?;
            &decompressed
        } else {
            &self.body
        };
        if self.status.is_success() {
            return serde_json::from_slice(body).map_err(|e| {
                Error::Protocol(format!("{url}: an answer this release cannot read: {e}"))
            });
        }
        Err(answer_error(url, self.status, body))
    }
}

/// A page requested before the engine asks for it.
///
/// The engine fetches the next page of a pull or a snapshot while it
/// applies the current one; over HTTP that fetch (the server's query and
/// encoding, then this side's decoding) can take longer than the apply,
/// and the engine asks for the next page only once it has decoded the
/// current one. A page's answer names the next page in a header
/// ([`wire::NEXT_HEADER`]), so the backend asks for it at once, while it
/// decodes the answer it has: the server works on the next page while
/// this side decodes and applies. At most one page is read ahead.
///
/// A page read ahead is used only for the very request the engine makes
/// next (same endpoint, same body, same token) and only if that request
/// comes before any request of another kind: a push, an install, a
/// standing (with which every sync starts) or another page drop it. It is
/// then as fresh as the request that fetched it, which is no older than
/// the page the engine is applying: pull and bootstrap take pages read at
/// any time after their start (the engine's own fetch is one page ahead
/// too). A read-ahead that failed, or was answered with a passing failure
/// (`408`, `429`, `5xx`), is not reported: the request goes again.
///
/// One page is read ahead per backend: engines sharing one backend take
/// each other's read-ahead away (nothing is lost, the page is asked for
/// again); give each replica its own. A read-ahead of a sync that stopped
/// (an error, a halt, a cancelled `sync_now`) runs to its end and is
/// dropped with the backend's next request.
struct Ahead {
    endpoint: &'static str,
    /// The request's JSON.
    json: Vec<u8>,
    token: String,
    task: AbortOnDrop<Result<Arrived>>,
}

/// A task aborted when its handle is dropped.
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl std::fmt::Debug for HttpBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the token.
        f.debug_struct("HttpBackend")
            .field("url", &self.base)
            .finish_non_exhaustive()
    }
}

/// Options of an [`HttpBackend`].
pub struct HttpBackendBuilder {
    url: String,
    token: String,
    timeout: Duration,
    connect_timeout: Duration,
    roots: Vec<reqwest::Certificate>,
}

impl std::fmt::Debug for HttpBackendBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the token.
        f.debug_struct("HttpBackendBuilder")
            .field("url", &self.url)
            .field("timeout", &self.timeout)
            .field("connect_timeout", &self.connect_timeout)
            .finish_non_exhaustive()
    }
}

impl HttpBackendBuilder {
    /// How long one request may take in all (default 120 s): a request
    /// that takes longer is [`Error::Offline`].
    pub fn timeout(mut self, t: Duration) -> Self {
        self.timeout = t;
        self
    }

    /// How long connecting may take (default 10 s).
    pub fn connect_timeout(mut self, t: Duration) -> Self {
        self.connect_timeout = t;
        self
    }

    /// Trust this certificate (PEM) as a root, besides the usual ones: for
    /// a server with a certificate of your own authority.
    ///
    /// # Errors
    /// [`Error::Config`] when the PEM holds no certificate.
    pub fn add_root_certificate(mut self, pem: &[u8]) -> Result<Self> {
        let cert = reqwest::Certificate::from_pem(pem)
            .map_err(|e| Error::Config(format!("root certificate: {e}")))?;
        self.roots.push(cert);
        Ok(self)
    }

    /// The backend.
    ///
    /// # Errors
    /// [`Error::Config`] for a URL that is not `http://` or `https://`
    /// with a host, or an empty token.
    pub fn build(self) -> Result<HttpBackend> {
        let base = self.url.trim_end_matches('/').to_owned();
        // Parsed now, so that a malformed URL is a configuration error
        // here rather than a request that fails, later, as if offline.
        let not_hub = |why: &dyn std::fmt::Display| {
            Error::Config(format!("`{}` is not a hub URL: {why}", self.url))
        };
        let parsed = reqwest::Url::parse(&base).map_err(|e| not_hub(&e))?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(not_hub(&"expected http:// or https://"));
        }
        if self.token.is_empty() {
            return Err(Error::Config("the hub token is empty".into()));
        }
        let mut builder = reqwest::Client::builder()
            .timeout(self.timeout)
            .connect_timeout(self.connect_timeout)
            .tcp_nodelay(true)
            .user_agent(concat!("tidesync/", env!("CARGO_PKG_VERSION")));
        for root in self.roots {
            builder = builder.add_root_certificate(root);
        }
        let client = builder
            .build()
            .map_err(|e| Error::Config(format!("HTTP client: {e}")))?;
        Ok(HttpBackend {
            sender: Sender {
                client,
                base: base.clone(),
            },
            base,
            token: RwLock::new(self.token),
            tables: Mutex::new(None),
            ahead: Mutex::new(None),
            no_states: std::sync::atomic::AtomicBool::new(false),
        })
    }
}

impl HttpBackend {
    /// A backend for the hub server at `url` (`https://hub.example.com`,
    /// or `http://127.0.0.1:8080` on a trusted network), with the bearer
    /// `token` (from `tidesync-hub token add`, or a JWT the server accepts).
    ///
    /// # Errors
    /// As [`HttpBackendBuilder::build`].
    pub fn new(url: &str, token: impl Into<String>) -> Result<Self> {
        Self::builder(url, token).build()
    }

    /// A backend with options.
    pub fn builder(url: &str, token: impl Into<String>) -> HttpBackendBuilder {
        HttpBackendBuilder {
            url: url.to_owned(),
            token: token.into(),
            timeout: Duration::from_secs(120),
            connect_timeout: Duration::from_secs(10),
            roots: Vec::new(),
        }
    }

    /// The server's URL.
    pub fn url(&self) -> &str {
        &self.base
    }

    /// Sign in with `token` from the next request on: for a JWT the
    /// application renews before it expires, or a hub token replaced
    /// after a revocation. Keep an `Arc` of the backend to call it while a
    /// `SyncEngine` syncs over it; a request already sent keeps the token
    /// it was sent with.
    ///
    /// ```no_run
    /// # async fn run(replica: sync_core::Replica, fresh_jwt: String) -> sync_core::Result<()> {
    /// use std::sync::Arc;
    /// use sync_http::HttpBackend;
    ///
    /// let hub = Arc::new(HttpBackend::new("https://hub.example.com", "eyJ...")?);
    /// let engine = sync_core::SyncEngine::new(replica, hub.clone());
    /// // ... when the identity provider issues a new token:
    /// hub.set_token(fresh_jwt)?;
    /// engine.sync_now().await?;
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// [`Error::Config`] for an empty token (the one in use stays).
    pub fn set_token(&self, token: impl Into<String>) -> Result<()> {
        let token = token.into();
        if token.is_empty() {
            return Err(Error::Config("the hub token is empty".into()));
        }
        *self.token.write().unwrap_or_else(|e| e.into_inner()) = token;
        Ok(())
    }

    /// The token to send now.
    fn token(&self) -> String {
        self.token.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// One request: the body as JSON (compressed when large), the answer
    /// decoded, every failure mapped to an [`Error`]. Drops the page read
    /// ahead, if any.
    async fn call<B: Serialize, A: DeserializeOwned>(&self, endpoint: &str, body: &B) -> Result<A> {
        drop(self.take_ahead());
        let json = serde_json::to_vec(body)?;
        self.sender
            .send(endpoint, json, self.token())
            .await?
            .decode()
    }

    /// A page of a pull or a snapshot: the one read ahead if it is this
    /// request's, else asked for now; and the next page read ahead when the
    /// answer names one (`next` makes its request from the name).
    async fn page<B: Serialize, A: DeserializeOwned>(
        &self,
        endpoint: &'static str,
        body: &B,
        next: impl FnOnce(&str) -> Option<B>,
    ) -> Result<A> {
        let json = serde_json::to_vec(body)?;
        let token = self.token();
        let ahead = self
            .take_ahead()
            .filter(|a| a.endpoint == endpoint && a.json == json && a.token == token);
        let read_ahead = match ahead {
            Some(mut a) => match (&mut a.task.0).await {
                // A passing failure (`408`, `429`, `5xx`: a server
                // draining behind a balancer, a user at their cap) is asked
                // again below, now, as a failed or aborted request is; a
                // lasting one (`401`, `4xx`) comes back the same.
                Ok(Ok(arrived)) if !arrived.passing_failure() => Some(arrived),
                Ok(_) => None,
                Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
                Err(_) => None,
            },
            None => None,
        };
        let arrived = match read_ahead {
            Some(arrived) => arrived,
            None => self.sender.send(endpoint, json, token.clone()).await?,
        };
        if arrived.status.is_success()
            && let Some(body) = arrived.next.as_deref().and_then(next)
        {
            let json = serde_json::to_vec(&body)?;
            let (sender, sent, t) = (self.sender.clone(), json.clone(), token.clone());
            let task = tokio::spawn(async move { sender.send(endpoint, sent, t).await });
            if let Ok(mut slot) = self.ahead.lock() {
                *slot = Some(Ahead {
                    endpoint,
                    json,
                    token,
                    task: AbortOnDrop(task),
                });
            }
        }
        arrived.decode()
    }

    /// The page read ahead, taken away.
    fn take_ahead(&self) -> Option<Ahead> {
        self.ahead.lock().ok().and_then(|mut a| a.take())
    }

    /// A call that installs the tables again and retries once when the
    /// server has not installed them (another server behind the same
    /// address, or one restarted since).
    async fn call_installed<B: Serialize, A: DeserializeOwned>(
        &self,
        endpoint: &str,
        body: impl Fn(Option<String>, Option<Vec<TableSpec>>) -> B,
    ) -> Result<A> {
        match self.call(endpoint, &body(self.tables_id(), None)).await {
            Err(Error::UnknownTable(_)) => {
                let tables = self.tables.lock().ok().and_then(|t| t.clone());
                let Some((tables, _)) = tables else {
                    return Err(Error::Protocol(
                        "the hub asks for an install, and none was made".into(),
                    ));
                };
                // The tables with the request: whichever server answers it
                // installs them first.
                self.call(endpoint, &body(None, Some(tables))).await
            }
            other => other,
        }
    }

    /// The id the server gave this device's tables.
    fn tables_id(&self) -> Option<String> {
        self.tables
            .lock()
            .ok()
            .and_then(|t| t.as_ref().map(|(_, id)| id.clone()))
    }

    /// A snapshot page (leaving out the rows `excluding`'s pushes set
    /// whole, where the server knows how).
    async fn snapshot_page(
        &self,
        after: Option<String>,
        limit: u64,
        excluding: Option<NodeId>,
    ) -> Result<(Cursor, SnapshotPage)> {
        let tables = self.tables_id();
        let body = wire::SnapshotRequest {
            after,
            limit,
            tables: tables.clone(),
            excluding,
        };
        let next = |after: &str| {
            Some(wire::SnapshotRequest {
                after: Some(after.to_owned()),
                limit,
                tables,
                excluding,
            })
        };
        let a: wire::SnapshotAnswer = self.page("snapshot", &body, next).await?;
        Ok((a.cursor, a.page))
    }

    /// A page of the hub's log (leaving out `excluding`'s changes).
    async fn pull_page(
        &self,
        cursor: Cursor,
        limit: u64,
        excluding: Option<NodeId>,
    ) -> Result<PullBatch> {
        let body = wire::PullRequest {
            cursor,
            limit,
            excluding,
        };
        let next = |named: &str| {
            Some(wire::PullRequest {
                cursor: Cursor(named.parse().ok()?),
                limit,
                excluding,
            })
        };
        self.page("pull", &body, next).await
    }

    /// Push `batch`, in halves when the server finds it too large.
    async fn push_split(&self, batch: &[Change]) -> Result<PushAck> {
        let body = |tables, install| wire::PushBody {
            changes: batch,
            tables,
            install,
        };
        match self.call_installed::<_, PushAck>("push", body).await {
            Err(e) if is_too_large(&e) && batch.len() > 1 => {
                let (first, rest) = batch.split_at(batch.len() / 2);
                let mut ack = Box::pin(self.push_split(first)).await?;
                // The rest only if the first half went through whole.
                if ack.halted.is_some() || ack.clashed.is_some() {
                    return Ok(ack);
                }
                let more = Box::pin(self.push_split(rest)).await?;
                ack.acknowledged.extend(more.acknowledged);
                ack.parked.extend(more.parked);
                ack.conflicts.extend(more.conflicts);
                ack.settled.extend(more.settled);
                ack.halted = more.halted;
                ack.clashed = more.clashed;
                ack.clock_ahead = more.clock_ahead;
                Ok(ack)
            }
            // One change the server cannot take (too large, or a body it
            // cannot parse: a JSON value nested past its parser's depth):
            // it halts this device's stream with the reason, and the sync
            // goes on to pull.
            Err(Error::Config(reason)) if batch.len() == 1 => {
                let c = &batch[0];
                Ok(PushAck {
                    halted: Some(sync_core::hub::Rejection {
                        id: c.id,
                        table: c.table.clone(),
                        reason,
                    }),
                    ..PushAck::default()
                })
            }
            other => other,
        }
    }
}

/// The most bytes an answer may decompress to.
const MAX_ANSWER: usize = 1 << 30;

/// The `Error::Config` marker of a `413`.
const TOO_LARGE: &str = "the hub refuses a body this large";

/// The `Error::Config` marker of a `404 not-found`: the server speaks the
/// protocol but has no such endpoint (an earlier release).
const NO_ENDPOINT: &str = "the hub has no such endpoint";

fn is_not_found(e: &Error) -> bool {
    matches!(e, Error::Config(m) if m.starts_with(NO_ENDPOINT))
}

fn is_too_large(e: &Error) -> bool {
    matches!(e, Error::Config(m) if m.starts_with(TOO_LARGE))
}

/// A request that did not reach the server, or whose answer did not come
/// back: offline, retried later.
fn offline(url: &str, e: &reqwest::Error) -> Error {
    let what = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "cannot connect"
    } else {
        "request failed"
    };
    // The source chain says why (refused, reset, DNS): without the URL's
    // query, which never holds the token (it travels in a header).
    let mut cause = String::new();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        cause = s.to_string();
        source = s.source();
    }
    if cause.is_empty() {
        Error::Offline(format!("{url}: {what}"))
    } else {
        Error::Offline(format!("{url}: {what}: {cause}"))
    }
}

/// The error an answer other than `200` stands for.
fn answer_error(url: &str, status: reqwest::StatusCode, body: &[u8]) -> Error {
    let detail = serde_json::from_slice::<ErrorBody>(body)
        .ok()
        .map(|b| b.error);
    let message = detail.as_ref().map_or_else(
        || String::from_utf8_lossy(&body[..body.len().min(500)]).into_owned(),
        |d| d.message.clone(),
    );
    let code = detail.as_ref().map_or("", |d| d.code.as_str());
    match (status.as_u16(), code) {
        (401 | 403, _) => Error::Unauthorized(format!("{url}: {message}")),
        // Matched by `call_installed`: the server names the table.
        (409, "install-required") => Error::UnknownTable(message),
        (413, _) => Error::Config(format!("{TOO_LARGE} ({url}): {message}")),
        (400, "unsupported-version") => Error::Protocol(format!(
            "{url}: this client speaks tidesync protocol {PROTOCOL_VERSION}: {message}"
        )),
        (404, _) if detail.is_none() => Error::Protocol(format!(
            "{url}: not found: is this a tidesync hub speaking protocol {PROTOCOL_VERSION}?"
        )),
        (404, "not-found") => Error::Config(format!("{NO_ENDPOINT} ({url}): {message}")),
        (400 | 404 | 422, _) => {
            Error::Config(format!("the hub refused the request ({url}): {message}"))
        }
        // Passing, or the server's own failure: retried later, nothing is
        // taken as done.
        (408 | 429 | 500..=599, _) => Error::Offline(format!("{url}: {status}: {message}")),
        _ => Error::Protocol(format!("{url}: {status}: {message}")),
    }
}

#[async_trait::async_trait]
impl Hub for HttpBackend {
    async fn install(&self, tables: &[TableSpec]) -> Result<HubInfo> {
        let answer: wire::InstallAnswer = self
            .call(
                "install",
                &wire::InstallRequest {
                    tables: tables.to_vec(),
                },
            )
            .await?;
        if let Ok(mut t) = self.tables.lock() {
            *t = Some((tables.to_vec(), answer.tables));
        }
        Ok(answer.info)
    }

    async fn push(&self, batch: &[Change]) -> Result<PushAck> {
        if batch.is_empty() {
            return Ok(PushAck::default());
        }
        self.push_split(batch).await
    }

    async fn standing(&self, origin: NodeId, at: Option<Cursor>) -> Result<Standing> {
        self.call("standing", &wire::StandingRequest { origin, at })
            .await
    }

    async fn pull(&self, cursor: Cursor, limit: u64) -> Result<PullBatch> {
        self.pull_page(cursor, limit, None).await
    }

    async fn pull_excluding(
        &self,
        cursor: Cursor,
        limit: u64,
        origin: NodeId,
    ) -> Result<PullBatch> {
        self.pull_page(cursor, limit, Some(origin)).await
    }

    async fn pull_states(&self, cursor: Cursor, limit: u64, origin: NodeId) -> Result<StatePage> {
        if !self.no_states.load(std::sync::atomic::Ordering::Relaxed) {
            let body = wire::StatesRequest {
                cursor,
                limit,
                excluding: origin,
            };
            let next = |named: &str| {
                Some(wire::StatesRequest {
                    cursor: Cursor(named.parse().ok()?),
                    limit,
                    excluding: origin,
                })
            };
            match self.page("states", &body, next).await {
                // A server of an earlier release: it pulls changes.
                Err(e) if is_not_found(&e) => {
                    self.no_states
                        .store(true, std::sync::atomic::Ordering::Relaxed);
                }
                other => return other,
            }
        }
        Ok(self.pull_page(cursor, limit, Some(origin)).await?.into())
    }

    async fn snapshot(&self, after: Option<String>, limit: u64) -> Result<(Cursor, SnapshotPage)> {
        self.snapshot_page(after, limit, None).await
    }

    async fn snapshot_excluding(
        &self,
        after: Option<String>,
        limit: u64,
        origin: NodeId,
    ) -> Result<(Cursor, SnapshotPage)> {
        self.snapshot_page(after, limit, Some(origin)).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A read-ahead answered with a passing failure (a `503` of a server
    /// draining behind a balancer) is asked again when the engine asks
    /// for its page, not handed over as the page's answer.
    #[cfg(feature = "server")]
    #[tokio::test]
    async fn a_read_ahead_answered_with_a_passing_failure_is_asked_again() {
        use axum::http::StatusCode;
        use axum::response::IntoResponse;
        use std::sync::Arc;
        use std::sync::atomic::{AtomicUsize, Ordering};

        let asked = Arc::new(AtomicUsize::new(0));
        let counter = asked.clone();
        let app = axum::Router::new().route(
            "/v1/snapshot",
            axum::routing::post(move || {
                let n = counter.fetch_add(1, Ordering::SeqCst);
                async move {
                    let page = |next: Option<&str>| {
                        serde_json::to_vec(&wire::SnapshotAnswer {
                            cursor: Cursor(5),
                            page: SnapshotPage {
                                rows: vec![],
                                next: next.map(str::to_owned),
                            },
                        })
                        .unwrap()
                    };
                    match n {
                        0 => (
                            StatusCode::OK,
                            [(wire::NEXT_HEADER, "p2")],
                            page(Some("p2")),
                        )
                            .into_response(),
                        1 => (
                            StatusCode::SERVICE_UNAVAILABLE,
                            r#"{"error":{"code":"unavailable","message":"draining"}}"#,
                        )
                            .into_response(),
                        _ => (StatusCode::OK, page(None)).into_response(),
                    }
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        let hub = HttpBackend::new(&url, "t").unwrap();
        let (_, first) = hub.snapshot(None, 1).await.unwrap();
        assert_eq!(first.next.as_deref(), Some("p2"));
        // The read-ahead was answered (503) before the page is asked for.
        for _ in 0..500 {
            if asked.load(Ordering::SeqCst) >= 2 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(asked.load(Ordering::SeqCst), 2);
        let (_, second) = hub.snapshot(Some("p2".into()), 1).await.unwrap();
        assert_eq!(second.next, None);
        assert_eq!(asked.load(Ordering::SeqCst), 3);
    }

    /// A server of a release before pulls of row states answers `404` to
    /// `/v1/states`: the client pulls changes from it instead, each as the
    /// state it makes, and does not ask that server for states again.
    #[cfg(feature = "server")]
    #[tokio::test]
    async fn a_server_without_state_pulls_is_pulled_for_changes() {
        use axum::http::StatusCode;
        use axum::response::IntoResponse;
        use std::sync::Arc;
        use std::sync::atomic::{AtomicUsize, Ordering};
        use sync_core::{ChangeId, Hlc, Op};

        let states_asked = Arc::new(AtomicUsize::new(0));
        let counter = states_asked.clone();
        let change = Change {
            id: ChangeId {
                origin: NodeId([1; 16]),
                seq: 4,
            },
            table: "notes".into(),
            pk: vec![("id".into(), 7i64.into())],
            op: Op::Insert,
            columns: vec![("body".into(), "hi".into())],
            hlc: Hlc {
                physical: 10,
                logical: 0,
                node: NodeId([1; 16]),
            },
            base: Vec::new(),
        };
        let batch = PullBatch {
            changes: vec![change],
            next: Cursor(9),
            ..PullBatch::default()
        };
        let body = serde_json::to_vec(&batch).unwrap();
        let app = axum::Router::new()
            .route(
                "/v1/states",
                axum::routing::post(move || {
                    counter.fetch_add(1, Ordering::SeqCst);
                    async {
                        (
                            StatusCode::NOT_FOUND,
                            r#"{"error":{"code":"not-found","message":"no endpoint `states` in protocol 1"}}"#,
                        )
                            .into_response()
                    }
                }),
            )
            .route(
                "/v1/pull",
                axum::routing::post(move || {
                    let body = body.clone();
                    async move { (StatusCode::OK, body).into_response() }
                }),
            );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        let hub = HttpBackend::new(&url, "t").unwrap();
        for _ in 0..2 {
            let page = hub
                .pull_states(Cursor(0), 10, NodeId([2; 16]))
                .await
                .unwrap();
            assert_eq!(page.next, Cursor(9));
            assert_eq!(page.rows.len(), 1);
            assert_eq!(page.rows[0].table, "notes");
            assert_eq!(
                page.rows[0].state.vals.get("body"),
                Some(&sea_orm::Value::from("hi"))
            );
        }
        assert_eq!(states_asked.load(Ordering::SeqCst), 1, "asked once");
    }

    #[test]
    fn only_well_formed_http_urls_make_a_backend() {
        for good in [
            "http://127.0.0.1:8080",
            "https://hub.example.com/",
            "HTTP://x",
        ] {
            assert!(HttpBackend::new(good, "t").is_ok(), "{good}");
        }
        for bad in [
            "",
            "http://",
            "https:///",
            "http://a b",
            "ftp://x",
            "127.0.0.1:80",
        ] {
            assert!(
                matches!(HttpBackend::new(bad, "t"), Err(Error::Config(_))),
                "{bad}"
            );
        }
        assert!(matches!(
            HttpBackend::new("http://x", ""),
            Err(Error::Config(_))
        ));
    }
}
