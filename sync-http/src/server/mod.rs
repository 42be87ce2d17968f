//! The hub server: any [`SqlHub`] (PostgreSQL, MySQL/MariaDB, SQLite)
//! served over HTTP to devices with accounts.
//!
//! The server keeps nothing of its own outside the hub database: tokens
//! are rows there, tables' ownership is recorded there, and each request is
//! answered from it. Two or more servers on one hub database serve the
//! same users at once (a server that has not installed a table a push
//! names answers `409 install-required`, and the client installs and
//! pushes again).
//!
//! Each request: the protocol version (`400` if unknown), the bearer token
//! or JWT (`401`, looked up within one of the server's [`MAX_IN_FLIGHT`]
//! slots, `503` when none is free), a slot of the user's (`503` when the
//! user has [`MAX_IN_FLIGHT_PER_USER`] requests in flight), the body read
//! up to the size limit without buffering
//! more (`413`) and within the body timeout (`408`), decompressed up to the
//! same limit, parsed (`400`), then answered by the hub
//! [`for_account`](SqlHub::for_account) of the token's user. See
//! [`wire`] for the table of answers.

mod tokens;

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use serde::Serialize;
use serde::de::DeserializeOwned;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use sync_core::hub::{Account, Authorize, Hub, SqlHub, UserHub};
use sync_core::{Error, Result, TableSpec};

pub use tokens::{TokenInfo, Tokens};

use crate::wire::{self, ErrorBody, ErrorDetail, PROTOCOL_VERSION, VERSION_HEADER};

/// The default of [`HubServer::max_body_bytes`]: 32 MiB.
pub const DEFAULT_MAX_BODY: usize = 32 << 20;

/// A key to verify JWTs from the application's own identity provider:
/// the token's `sub` is the user, `exp` is required.
#[derive(Clone)]
pub struct JwtKey {
    key: jsonwebtoken::DecodingKey,
    validation: jsonwebtoken::Validation,
}

impl std::fmt::Debug for JwtKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtKey")
            .field("algorithms", &self.validation.algorithms)
            .finish_non_exhaustive()
    }
}

impl JwtKey {
    /// HS256 with a shared secret.
    pub fn hs256(secret: &[u8]) -> Self {
        Self::with(
            jsonwebtoken::DecodingKey::from_secret(secret),
            jsonwebtoken::Algorithm::HS256,
        )
    }

    /// RS256 with the provider's public key (PEM).
    ///
    /// # Errors
    /// [`Error::Config`] for a PEM that is not an RSA public key.
    pub fn rs256_pem(public_key: &[u8]) -> Result<Self> {
        let key = jsonwebtoken::DecodingKey::from_rsa_pem(public_key)
            .map_err(|e| Error::Config(format!("RS256 public key: {e}")))?;
        Ok(Self::with(key, jsonwebtoken::Algorithm::RS256))
    }

    fn with(key: jsonwebtoken::DecodingKey, alg: jsonwebtoken::Algorithm) -> Self {
        let mut validation = jsonwebtoken::Validation::new(alg);
        validation.set_required_spec_claims(&["exp", "sub"]);
        validation.validate_aud = false;
        validation.leeway = 30;
        validation.validate_nbf = true;
        JwtKey { key, validation }
    }

    /// Accept only tokens issued by `issuer` (`iss`).
    pub fn issuer(mut self, issuer: &str) -> Self {
        self.validation.set_issuer(&[issuer]);
        self
    }

    /// Accept only tokens for `audience` (`aud`).
    pub fn audience(mut self, audience: &str) -> Self {
        self.validation.set_audience(&[audience]);
        self.validation.validate_aud = true;
        self
    }

    /// The user a JWT signs in, if it is valid.
    fn user(&self, token: &str) -> Option<String> {
        #[derive(serde::Deserialize)]
        struct Claims {
            sub: String,
        }
        jsonwebtoken::decode::<Claims>(token, &self.key, &self.validation)
            .ok()
            .map(|d| d.claims.sub)
            .filter(|s| !s.is_empty())
    }
}

/// The hub server. See the [module docs](self).
///
/// ```no_run
/// # async fn run() -> sync_core::Result<()> {
/// // In an application: `tidesync::http::HubServer` (feature `http-server`).
/// use sync_core::hub::SqlHub;
/// use sync_http::HubServer;
///
/// let hub = SqlHub::connect("postgres://hub@db.internal/hub").await?;
/// let server = HubServer::new(hub).await?;
/// let token = server.tokens().add("alice").await?;
/// let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await.unwrap();
/// server.serve(listener, std::future::pending()).await.unwrap();
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct HubServer {
    inner: Arc<Inner>,
}

struct Inner {
    hub: SqlHub,
    tokens: Tokens,
    jwt: Option<JwtKey>,
    max_body: usize,
    body_timeout: Duration,
    share_undeclared: bool,
    new_tables: bool,
    adopt: bool,
    authorize: Option<Arc<Authorize>>,
    /// Requests being answered, at most [`MAX_IN_FLIGHT`] (each may hold
    /// a body of up to `max_body` bytes, and its decompression). Taken
    /// before the token's lookup, and given back when the user has no slot
    /// of their own free, so one user's requests never hold more than
    /// [`MAX_IN_FLIGHT_PER_USER`] of these.
    in_flight: Arc<tokio::sync::Semaphore>,
    /// Requests in flight by user (only users with some).
    per_user: Arc<std::sync::Mutex<HashMap<String, usize>>>,
    /// Installed tables by the id the install answered (see
    /// [`wire::InstallAnswer`]): a cache, rebuilt by installs.
    installed: std::sync::Mutex<Installed>,
}

/// The installs a server remembers, and the bytes of their JSON.
#[derive(Default)]
struct Installed {
    tables: HashMap<String, Arc<Vec<TableSpec>>>,
    bytes: usize,
}

/// How many requests a server answers at once; more get `503` (the
/// client is offline and tries again).
pub const MAX_IN_FLIGHT: usize = 64;

/// How many of those one user's requests may be, on one server; more get
/// `503` too. One user's slow uploads (or many devices of one account)
/// never take the server from the others.
pub const MAX_IN_FLIGHT_PER_USER: usize = 8;

/// How many installs a server remembers, and how many bytes of their
/// JSON, before it starts over (clients install again when asked): a user
/// sending installs of large tables that differ only in their columns'
/// order fills no server's memory.
const INSTALLS_KEPT: usize = 4096;
const INSTALLS_KEPT_BYTES: usize = 64 << 20;

/// The most changes one push takes; a larger one gets `413`, and the
/// client pushes it again in halves. A push holds the hub's sequence lock
/// until it commits, and a batch the hub refuses part of goes change by
/// change: this bounds how long one user's push holds up everyone's.
pub const MAX_PUSH: usize = 2_000;

/// The most changes or rows one pull or snapshot page answers, whatever
/// the client asks (a page cursor moves on: the client asks again).
pub const MAX_PAGE: u64 = 2_000;

impl std::fmt::Debug for HubServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HubServer")
            .field("hub", &self.inner.hub)
            .field("max_body", &self.inner.max_body)
            .field("jwt", &self.inner.jwt)
            .finish_non_exhaustive()
    }
}

impl HubServer {
    /// A server of `hub` (creating the tokens table if needed).
    ///
    /// # Errors
    /// [`Error::Offline`] when the hub database cannot be reached.
    pub async fn new(hub: SqlHub) -> Result<Self> {
        // The hub's own tables, so that a request before the first install
        // finds them (and finds nothing).
        hub.install(&[]).await?;
        let tokens = Tokens::open(hub.connection().clone()).await?;
        Ok(HubServer {
            inner: Arc::new(Inner {
                hub,
                tokens,
                jwt: None,
                max_body: DEFAULT_MAX_BODY,
                body_timeout: Duration::from_secs(60),
                share_undeclared: false,
                new_tables: true,
                adopt: false,
                authorize: None,
                installed: std::sync::Mutex::new(Installed::default()),
                in_flight: Arc::new(tokio::sync::Semaphore::new(MAX_IN_FLIGHT)),
                per_user: Arc::default(),
            }),
        })
    }

    fn inner_mut(&mut self) -> &mut Inner {
        Arc::get_mut(&mut self.inner).expect("configured before it is shared")
    }

    /// The largest request body accepted, compressed or not (default
    /// [`DEFAULT_MAX_BODY`]); a larger one gets `413` and is not read.
    pub fn max_body_bytes(mut self, bytes: usize) -> Self {
        self.inner_mut().max_body = bytes;
        self
    }

    /// How long a client may take to send its body (default 60 s): a
    /// slower one gets `408` (and holds no database connection meanwhile).
    pub fn body_timeout(mut self, t: Duration) -> Self {
        self.inner_mut().body_timeout = t;
        self
    }

    /// Serve tables that declare no ownership as shared by every user
    /// (see [`Account::sharing_undeclared`]); off by default.
    pub fn share_undeclared(mut self, share: bool) -> Self {
        self.inner_mut().share_undeclared = share;
        self
    }

    /// Whether devices may install tables the hub does not have yet
    /// (default yes; see [`Account::adding_tables`]). With `false` the
    /// hub's tables, their columns, and who owns their rows are set by an
    /// operator: a direct install (`SqlHub`), or a server that allows it,
    /// run once. On a hub open to the public, use `false`: otherwise the
    /// first device to install a table name sets who owns its rows.
    pub fn new_tables(mut self, allow: bool) -> Self {
        self.inner_mut().new_tables = allow;
        self
    }

    /// Let a device's install adopt tables the hub database holds without
    /// a record of them (default no; see [`Account::adopting_tables`]).
    pub fn adopt_existing_tables(mut self, adopt: bool) -> Self {
        self.inner_mut().adopt = adopt;
        self
    }

    /// Check every change a user pushes with `rule` as well (see
    /// [`Account::with_authorization`]).
    pub fn with_authorization(mut self, rule: Arc<Authorize>) -> Self {
        self.inner_mut().authorize = Some(rule);
        self
    }

    /// Accept JWTs verified with `key` as well as the hub's own tokens.
    pub fn with_jwt(mut self, key: JwtKey) -> Self {
        self.inner_mut().jwt = Some(key);
        self
    }

    /// The hub's tokens.
    pub fn tokens(&self) -> &Tokens {
        &self.inner.tokens
    }

    /// The hub.
    pub fn hub(&self) -> &SqlHub {
        &self.inner.hub
    }

    /// The routes, to serve with `axum::serve` or to nest in an
    /// application's own router.
    pub fn router(&self) -> Router {
        Router::new()
            .route("/health", get(health))
            .route("/v1/{endpoint}", post(handle))
            .route("/{version}/{endpoint}", post(other_version))
            .fallback(not_found)
            .with_state(self.inner.clone())
    }

    /// Serve on `listener` until `shutdown` completes, then finish the
    /// requests in flight.
    ///
    /// # Errors
    /// I/O errors of the listener.
    pub async fn serve(
        self,
        listener: tokio::net::TcpListener,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        use axum::serve::ListenerExt;
        // No Nagle: an answer written in more than one segment would
        // otherwise wait for the client's delayed acknowledgement.
        let listener = listener.tap_io(|tcp| {
            if let Err(e) = tcp.set_nodelay(true) {
                tracing::debug!("TCP_NODELAY not set on a connection: {e}");
            }
        });
        axum::serve(listener, self.router())
            .with_graceful_shutdown(shutdown)
            .await
    }
}

/// An answer other than `200`.
struct Failure {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl Failure {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Failure {
            status,
            code,
            message: message.into(),
        }
    }

    fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad-request", message)
    }

    /// The answer to a hub error.
    fn of(e: Error) -> Self {
        match e {
            Error::Offline(m) => {
                tracing::warn!("hub database unavailable: {m}");
                Self::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "unavailable",
                    "the hub database cannot be reached; try again later",
                )
            }
            Error::UnknownTable(t) => Self::new(StatusCode::CONFLICT, "install-required", t),
            Error::Unauthorized(m) => Self::new(StatusCode::FORBIDDEN, "forbidden", m),
            e @ Error::SchemaVersion { .. } => {
                tracing::error!("hub database: {e}");
                Self::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "unavailable",
                    "the hub database was written by a newer release of tidesync (logged on the server)",
                )
            }
            e @ (Error::Config(_) | Error::Unrepresentable { .. }) => {
                Self::new(StatusCode::UNPROCESSABLE_ENTITY, "refused", e.to_string())
            }
            e if e.is_retryable() => {
                tracing::warn!("hub busy: {e}");
                Self::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "unavailable",
                    "the hub database is busy; try again later",
                )
            }
            e => {
                tracing::error!("hub error: {e}");
                Self::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    "the hub failed (logged on the server)",
                )
            }
        }
    }
}

impl IntoResponse for Failure {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code.to_owned(),
                message: self.message,
            },
        };
        let json = serde_json::to_vec(&body).unwrap_or_default();
        (
            self.status,
            [
                (
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/json"),
                ),
                (
                    header::HeaderName::from_static(VERSION_HEADER),
                    HeaderValue::from(PROTOCOL_VERSION),
                ),
            ],
            json,
        )
            .into_response()
    }
}

async fn health() -> impl IntoResponse {
    (
        [(
            header::HeaderName::from_static(VERSION_HEADER),
            HeaderValue::from(PROTOCOL_VERSION),
        )],
        "ok\n",
    )
}

async fn not_found() -> Failure {
    Failure::new(StatusCode::NOT_FOUND, "not-found", "no such endpoint")
}

async fn other_version(Path((version, _)): Path<(String, String)>) -> Failure {
    unsupported(&version)
}

fn unsupported(version: &str) -> Failure {
    tracing::warn!("a client asked for protocol {version:?}; this hub speaks {PROTOCOL_VERSION}");
    Failure::new(
        StatusCode::BAD_REQUEST,
        "unsupported-version",
        format!(
            "this hub speaks tidesync protocol {PROTOCOL_VERSION}, the request is of {version:?}"
        ),
    )
}

/// Every endpoint: checks, then the hub method.
async fn handle(
    State(inner): State<Arc<Inner>>,
    Path(endpoint): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let started = Instant::now();
    let answered = std::panic::AssertUnwindSafe(answer(&inner, &endpoint, &headers, body));
    let answered = futures_util::FutureExt::catch_unwind(answered)
        .await
        .unwrap_or_else(|_| {
            tracing::error!("a request to {endpoint:?} panicked");
            Err((
                None,
                Failure::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    "the hub failed (logged on the server)",
                ),
            ))
        });
    let (user, result) = match answered {
        Ok((user, response)) => (Some(user), Ok(response)),
        Err((user, f)) => (user, Err(f)),
    };
    let status = match &result {
        Ok(_) => StatusCode::OK,
        Err(f) => f.status,
    };
    tracing::info!(
        endpoint = ?endpoint,
        user = %user.as_deref().unwrap_or("-"),
        status = status.as_u16(),
        ms = started.elapsed().as_millis() as u64,
        "request"
    );
    match result {
        Ok(r) => r,
        Err(f) => f.into_response(),
    }
}

type Answered = std::result::Result<(String, Response), (Option<String>, Failure)>;

async fn answer(inner: &Inner, endpoint: &str, headers: &HeaderMap, body: Body) -> Answered {
    if let Some(v) = headers.get(VERSION_HEADER)
        && v.as_bytes() != PROTOCOL_VERSION.to_string().as_bytes()
    {
        return Err((None, unsupported(&String::from_utf8_lossy(v.as_bytes()))));
    }
    // The server's slot before the token's lookup (a query of the hub
    // database): requests without an account are bounded too.
    let permit = inner.in_flight.clone().try_acquire_owned().map_err(|_| {
        (
            None,
            Failure::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "this server has too many requests in flight; try again later",
            ),
        )
    })?;
    let account = authenticate(inner, headers).await.map_err(|f| (None, f))?;
    let user = account.user().to_owned();
    let fail = |f| (Some(user.clone()), f);
    // Then the user's: a user at their cap gives the server's slot back at
    // once, so one user's requests (slow uploads) hold at most
    // MAX_IN_FLIGHT_PER_USER of the server's slots.
    let slot = UserSlot::take(&inner.per_user, &user).ok_or_else(|| {
        fail(Failure::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            format!(
                "this user has {MAX_IN_FLIGHT_PER_USER} requests in flight on this server; \
                 try again later"
            ),
        ))
    })?;
    // Held until the request's last work ends: work on a blocking thread
    // goes on after a client that hung up dropped this future.
    let held = Arc::new(Held {
        _permit: permit,
        _slot: slot,
    });
    let body = read_body(inner, headers, body).await.map_err(fail)?;
    let hub = inner.hub.for_account(account);
    let zstd = accepts_zstd(headers);
    let response = match endpoint {
        "install" => {
            let r: wire::InstallRequest = parse(&body, &held).await.map_err(fail)?;
            let answer = install(inner, &hub, &r.tables).await;
            reply(answer, None, zstd, &held).await
        }
        "push" => {
            let r: wire::PushRequest = parse(&body, &held).await.map_err(fail)?;
            if r.changes.len() > MAX_PUSH {
                return Err(fail(Failure::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "too-large",
                    format!(
                        "this hub takes at most {MAX_PUSH} changes per push, not {}",
                        r.changes.len()
                    ),
                )));
            }
            let hub = match &r.install {
                Some(tables) => match install(inner, &hub, tables).await {
                    Ok(_) => hub,
                    Err(e) => return Err((Some(user.clone()), Failure::of(e))),
                },
                None => match known(inner, r.tables.as_deref()) {
                    Some(tables) => hub.with_tables(tables),
                    None => hub,
                },
            };
            reply(hub.push(&r.changes).await, None, zstd, &held).await
        }
        "standing" => {
            let r: wire::StandingRequest = parse(&body, &held).await.map_err(fail)?;
            in_range(r.at).map_err(fail)?;
            reply(hub.standing(r.origin, r.at).await, None, zstd, &held).await
        }
        "pull" => {
            let r: wire::PullRequest = parse(&body, &held).await.map_err(fail)?;
            in_range(Some(r.cursor)).map_err(fail)?;
            let batch = match r.excluding {
                Some(origin) => {
                    hub.pull_excluding(r.cursor, r.limit.clamp(1, MAX_PAGE), origin)
                        .await
                }
                None => hub.pull(r.cursor, r.limit.clamp(1, MAX_PAGE)).await,
            };
            // A page that moved the cursor: more may follow.
            let next = match &batch {
                Ok(b) if b.next > r.cursor => Some(b.next.0.to_string()),
                _ => None,
            };
            reply(batch, next, zstd, &held).await
        }
        "states" => {
            let r: wire::StatesRequest = parse(&body, &held).await.map_err(fail)?;
            in_range(Some(r.cursor)).map_err(fail)?;
            let page = hub
                .pull_states(r.cursor, r.limit.clamp(1, MAX_PAGE), r.excluding)
                .await;
            // A page that moved the cursor: more may follow.
            let next = match &page {
                Ok(p) if p.next > r.cursor => Some(p.next.0.to_string()),
                _ => None,
            };
            reply(page, next, zstd, &held).await
        }
        "snapshot" => {
            let r: wire::SnapshotRequest = parse(&body, &held).await.map_err(fail)?;
            let hub = match known(inner, r.tables.as_deref()) {
                Some(tables) => hub.with_tables(tables),
                None => hub,
            };
            let page = snapshot(&hub, r).await;
            let next = page.as_ref().ok().and_then(|a| a.page.next.clone());
            reply(page, next, zstd, &held).await
        }
        _ => Err(Failure::new(
            StatusCode::NOT_FOUND,
            "not-found",
            format!("no endpoint `{endpoint}` in protocol {PROTOCOL_VERSION}"),
        )),
    };
    response.map(|r| (user.clone(), r)).map_err(fail)
}

/// One request of a user in flight (see [`MAX_IN_FLIGHT_PER_USER`]),
/// given back on drop.
struct UserSlot {
    users: Arc<std::sync::Mutex<HashMap<String, usize>>>,
    user: String,
}

impl UserSlot {
    /// A slot of `user`'s, if they have one free.
    fn take(users: &Arc<std::sync::Mutex<HashMap<String, usize>>>, user: &str) -> Option<Self> {
        let mut map = users
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let n = map.entry(user.to_owned()).or_insert(0);
        if *n >= MAX_IN_FLIGHT_PER_USER {
            return None;
        }
        *n += 1;
        Some(UserSlot {
            users: users.clone(),
            user: user.to_owned(),
        })
    }
}

impl Drop for UserSlot {
    fn drop(&mut self) {
        let mut map = self
            .users
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(n) = map.get_mut(&self.user) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                map.remove(&self.user);
            }
        }
    }
}

/// The tables of the install `id`, if this server knows it.
fn known(inner: &Inner, id: Option<&str>) -> Option<Arc<Vec<TableSpec>>> {
    let id = id?;
    inner
        .installed
        .lock()
        .ok()
        .and_then(|m| m.tables.get(id).cloned())
}

/// Install the device's tables, and remember them under the id answered.
async fn install(
    inner: &Inner,
    hub: &UserHub<'_>,
    tables: &[TableSpec],
) -> Result<wire::InstallAnswer> {
    let info = hub.install(tables).await?;
    let placed = hub
        .tables()
        .ok_or_else(|| Error::Corrupt("an install placed no tables".into()))?;
    let json = serde_json::to_vec(tables)?;
    let id: String = Sha256::digest(&json)
        .iter()
        .take(16)
        .map(|b| format!("{b:02x}"))
        .collect();
    if let Ok(mut m) = inner.installed.lock() {
        if m.tables.len() >= INSTALLS_KEPT || m.bytes + json.len() > INSTALLS_KEPT_BYTES {
            *m = Installed::default();
        }
        if m.tables.insert(id.clone(), placed).is_none() {
            m.bytes += json.len();
        }
    }
    Ok(wire::InstallAnswer { info, tables: id })
}

async fn snapshot(hub: &UserHub<'_>, r: wire::SnapshotRequest) -> Result<wire::SnapshotAnswer> {
    let limit = r.limit.clamp(1, MAX_PAGE);
    let (cursor, page) = match r.excluding {
        Some(origin) => hub.snapshot_excluding(r.after, limit, origin).await?,
        None => hub.snapshot(r.after, limit).await?,
    };
    Ok(wire::SnapshotAnswer { cursor, page })
}

/// The account of the request's bearer token or JWT.
async fn authenticate(inner: &Inner, headers: &HeaderMap) -> std::result::Result<Account, Failure> {
    let unauthorized = |m: &str| Failure::new(StatusCode::UNAUTHORIZED, "unauthorized", m);
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return Err(unauthorized(
            "no token: send `Authorization: Bearer <token>`",
        ));
    };
    let token = value
        .to_str()
        .ok()
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim)
        .ok_or_else(|| unauthorized("the Authorization header is not `Bearer <token>`"))?;
    let user = if token.starts_with("tsk_") {
        inner.tokens.verify(token).await.map_err(Failure::of)?
    } else if let Some(jwt) = &inner.jwt {
        jwt.user(token)
    } else {
        None
    };
    let Some(user) = user else {
        return Err(unauthorized(
            "the token is not valid here (wrong, expired or revoked)",
        ));
    };
    let mut account = Account::new(user)
        .map_err(|_| unauthorized("the token names no user"))?
        .sharing_undeclared(inner.share_undeclared)
        .adding_tables(inner.new_tables)
        .adopting_tables(inner.adopt);
    if let Some(rule) = &inner.authorize {
        account = account.with_authorization(rule.clone());
    }
    Ok(account)
}

/// A request body as it arrived: at most `limit` bytes, and as many once
/// decompressed ([`parse`] decompresses it).
struct Received {
    bytes: Bytes,
    /// `content-encoding: zstd`.
    zstd: bool,
    limit: usize,
}

fn too_large(limit: usize) -> Failure {
    Failure::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "too-large",
        format!("this hub takes bodies of at most {limit} bytes"),
    )
}

/// The request body: at most `max_body` bytes.
async fn read_body(
    inner: &Inner,
    headers: &HeaderMap,
    body: Body,
) -> std::result::Result<Received, Failure> {
    let limit = inner.max_body;
    let too_large = || too_large(limit);
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(too_large());
    }
    let collected = tokio::time::timeout(inner.body_timeout, Limited::new(body, limit).collect())
        .await
        .map_err(|_| {
            Failure::new(
                StatusCode::REQUEST_TIMEOUT,
                "timeout",
                "the body did not arrive in time",
            )
        })?;
    let bytes = match collected {
        Ok(c) => c.to_bytes(),
        Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => return Err(too_large()),
        Err(e) => {
            return Err(Failure::bad_request(format!(
                "the body could not be read: {e}"
            )));
        }
    };
    let zstd = match headers
        .get(header::CONTENT_ENCODING)
        .map(HeaderValue::as_bytes)
    {
        None => false,
        Some(b) if b.eq_ignore_ascii_case(b"identity") => false,
        Some(b) if b.eq_ignore_ascii_case(b"zstd") => true,
        Some(other) => {
            return Err(Failure::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "bad-request",
                format!(
                    "content-encoding {:?} is not supported (zstd is)",
                    String::from_utf8_lossy(other)
                ),
            ));
        }
    };
    Ok(Received { bytes, zstd, limit })
}

/// Parsing or decompressing a body of more than this many bytes runs on
/// tokio's blocking threads: the async workers go on accepting and
/// answering other requests meanwhile.
const BLOCKING_BYTES: usize = 64 << 10;

/// The slots a request holds (the server's and its user's), shared with
/// its work on blocking threads, which goes on when the request's future
/// is dropped (a client that hung up): the slots are given back when the
/// last of it ends, so the caps bound that work too.
struct Held {
    _permit: tokio::sync::OwnedSemaphorePermit,
    _slot: UserSlot,
}

/// `f`, on a blocking thread (holding `held`) when its input is of `size`
/// bytes or more.
async fn cpu<R: Send + 'static>(
    size: usize,
    held: &Arc<Held>,
    f: impl FnOnce() -> R + Send + 'static,
) -> std::result::Result<R, Failure> {
    if size < BLOCKING_BYTES {
        return Ok(f());
    }
    let held = held.clone();
    let work = move || {
        let _held = held;
        f()
    };
    match tokio::task::spawn_blocking(work).await {
        Ok(r) => Ok(r),
        // Caught by `handle` (a `500`, logged).
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(_) => Err(Failure::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "this server is shutting down; try again later",
        )),
    }
}

/// The request `body`, decompressed and parsed: in one piece of work, on a
/// blocking thread for a large or compressed body (a small one may
/// decompress to the limit).
async fn parse<T: DeserializeOwned + Send + 'static>(
    body: &Received,
    held: &Arc<Held>,
) -> std::result::Result<T, Failure> {
    let (bytes, zstd, limit) = (body.bytes.clone(), body.zstd, body.limit);
    let size = if zstd { BLOCKING_BYTES } else { bytes.len() };
    cpu(size, held, move || {
        let decompressed;
        let json: &[u8] = if zstd {
            decompressed = wire::decompress(&bytes, limit).map_err(|e| match e {
                wire::DecodeError::TooLarge => too_large(limit),
                wire::DecodeError::Malformed(m) => Failure::bad_request(m),
            })?;
            &decompressed
        } else {
            &bytes
        };
        serde_json::from_slice(json)
            .map_err(|e| Failure::bad_request(format!("malformed body: {e}")))
    })
    .await?
}

/// A cursor a hub can hold (its sequences are signed 64-bit integers).
fn in_range(cursor: Option<sync_core::hub::Cursor>) -> std::result::Result<(), Failure> {
    match cursor {
        Some(c) if i64::try_from(c.0).is_err() => Err(Failure::bad_request(format!(
            "cursor {} is beyond any hub's log",
            c.0
        ))),
        _ => Ok(()),
    }
}

fn accepts_zstd(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT_ENCODING)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|e| {
            e.split(';')
                .next()
                .is_some_and(|e| e.trim().eq_ignore_ascii_case("zstd"))
        })
}

/// A `200` with the JSON of `value` (compressed if the client takes it)
/// and the name of the `next` page if given ([`wire::NEXT_HEADER`]), or
/// the failure the hub's error stands for.
async fn reply<T: Serialize + Send + 'static>(
    value: Result<T>,
    next: Option<String>,
    zstd: bool,
    held: &Arc<Held>,
) -> std::result::Result<Response, Failure> {
    let value = value.map_err(Failure::of)?;
    // Pages and acknowledgements may be large: on a blocking thread.
    let encoded = cpu(BLOCKING_BYTES, held, move || {
        let json = serde_json::to_vec(&value)?;
        Ok::<_, serde_json::Error>(if zstd {
            wire::encode(json)
        } else {
            (json, false)
        })
    })
    .await?;
    let (bytes, compressed) = encoded
        .map_err(|e| Failure::of(Error::Corrupt(format!("an answer that is not JSON: {e}"))))?;
    let mut response = (
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            ),
            (
                header::HeaderName::from_static(VERSION_HEADER),
                HeaderValue::from(PROTOCOL_VERSION),
            ),
        ],
        bytes,
    )
        .into_response();
    if compressed {
        response
            .headers_mut()
            .insert(header::CONTENT_ENCODING, HeaderValue::from_static("zstd"));
    }
    if let Some(v) = next.as_deref().and_then(next_header) {
        response
            .headers_mut()
            .insert(header::HeaderName::from_static(wire::NEXT_HEADER), v);
    }
    Ok(response)
}

/// Names of the next page longer than this are left to the body (see
/// [`next_header`]).
const NEXT_HEADER_MAX: usize = 1024;

/// The `tidesync-next` header naming `next`, unless it is not ASCII text
/// or it is long: a snapshot token of a long text key (hex of a sealed
/// key of up to 700 characters, several KiB) would make proxies with small
/// header buffers (nginx: 4 or 8 KiB) refuse the whole answer, the same
/// answer at every try, where without the header the client just reads
/// the page's name from the body.
fn next_header(next: &str) -> Option<HeaderValue> {
    // Text only (a client reads the header as ASCII).
    if next.len() > NEXT_HEADER_MAX || !next.is_ascii() {
        return None;
    }
    HeaderValue::from_str(next).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_short_page_names_go_in_a_header() {
        let sealed = format!("s1.{}", "ab".repeat(100));
        assert_eq!(next_header(&sealed).unwrap(), sealed.as_str());
        // A sealed token of a long text key: left to the body.
        let long = format!("s1.{}", "ab".repeat(NEXT_HEADER_MAX));
        assert!(next_header(&long).is_none());
        // A plain token naming a key a header cannot carry.
        assert!(next_header("[\"notes\",\"[{\\\"String\\\":\\\"k\u{e9}\\\"}]\",1]").is_none());
        assert!(next_header("a\nb").is_none());
        assert_eq!(next_header("42").unwrap(), "42");
    }
}
