//! `tidesync-hub serve`: the hub server over HTTP or HTTPS until a signal.

use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use sea_orm::{ConnectionTrait, DbBackend, Statement};
use sync_core::hub::{RejectPolicy, SqlHub};
use sync_http::{HubServer, JwtKey};
use tokio::task::JoinHandle;

use crate::dburl::DbUrl;
use crate::{Failure, Policy, ServeArgs, connect, hub_failure, out};

/// Everything read from files, before the database is touched.
struct Files {
    tls: Option<Arc<rustls::ServerConfig>>,
    jwt: Option<JwtKey>,
}

/// A server started: its task, and how to ask it to stop.
struct Running {
    task: JoinHandle<std::io::Result<()>>,
    stop: tokio::sync::oneshot::Sender<()>,
}

pub(crate) async fn run(db: &DbUrl, args: ServeArgs) -> Result<ExitCode, Failure> {
    // Listened for from the start: a signal while connecting stops too.
    let mut signals = Signals::new()?;
    let Running { mut task, stop } = tokio::select! {
        running = start(db, &args) => running?,
        signal = signals.next() => {
            tracing::info!("{signal} received while starting: stopped");
            return Ok(ExitCode::SUCCESS);
        }
    };
    let signal = tokio::select! {
        ended = &mut task => {
            // The server stopped by itself: only an error does that.
            return Err(Failure::runtime(match ended {
                Ok(Ok(())) => "the server stopped unexpectedly".to_owned(),
                Ok(Err(e)) => format!("the server failed: {e}"),
                Err(e) => format!("the server failed: {e}"),
            }));
        }
        signal = signals.next() => signal,
    };
    let grace = Duration::from_secs(args.shutdown_grace);
    tracing::info!(
        "{signal} received: no new connections; finishing the requests in flight \
         (at most {} s)",
        grace.as_secs()
    );
    let _ = stop.send(());
    tokio::select! {
        ended = tokio::time::timeout(grace, &mut task) => match ended {
            Ok(Ok(Ok(()))) => {
                tracing::info!("stopped");
                Ok(ExitCode::SUCCESS)
            }
            Ok(Ok(Err(e))) => Err(Failure::runtime(format!("the server failed while stopping: {e}"))),
            Ok(Err(e)) => Err(Failure::runtime(format!("the server failed while stopping: {e}"))),
            Err(_) => {
                tracing::warn!(
                    "requests still in flight after {} s: stopped anyway",
                    grace.as_secs()
                );
                Ok(ExitCode::SUCCESS)
            }
        },
        signal = signals.next() => {
            tracing::warn!("{signal} received again: stopped at once");
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Read the files, connect, listen, and serve in a task; print the
/// address once connections are accepted.
async fn start(db: &DbUrl, args: &ServeArgs) -> Result<Running, Failure> {
    let files = read_files(args)?;
    let policy = match args.policy {
        Policy::Halt => RejectPolicy::Halt,
        Policy::Park => RejectPolicy::Park,
    };
    let hub = connect(db).await?.with_policy(policy);
    let dialect = dialect(&hub).await;
    let mut server = HubServer::new(hub)
        .await
        .map_err(|e| hub_failure(db, "cannot prepare the hub", &e))?
        .max_body_bytes(usize::try_from(args.max_body_bytes).unwrap_or(usize::MAX))
        .body_timeout(Duration::from_secs(args.body_timeout))
        .share_undeclared(args.share_undeclared)
        .new_tables(!args.no_new_tables)
        .adopt_existing_tables(args.adopt_existing_tables);
    let auth = match (&files.jwt, &args.jwt_hs256_secret_file) {
        (None, _) => "hub tokens",
        (Some(_), Some(_)) => "hub tokens and HS256 JWTs",
        (Some(_), None) => "hub tokens and RS256 JWTs",
    };
    if let Some(key) = files.jwt {
        server = server.with_jwt(key);
    }

    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .map_err(|e| Failure::runtime(format!("cannot listen on {}: {e}", args.listen)))?;
    let addr = listener
        .local_addr()
        .map_err(|e| Failure::runtime(format!("cannot listen on {}: {e}", args.listen)))?;
    let scheme = if files.tls.is_some() { "https" } else { "http" };
    tracing::info!(
        "tidesync-hub {} serving the {dialect} hub {db} on {scheme}://{addr} \
         (policy {}, bodies up to {} bytes, {auth}{}{})",
        env!("CARGO_PKG_VERSION"),
        match args.policy {
            Policy::Halt => "halt",
            Policy::Park => "park",
        },
        args.max_body_bytes,
        if args.share_undeclared {
            ", undeclared tables shared"
        } else {
            ""
        },
        match (args.no_new_tables, args.adopt_existing_tables) {
            (true, _) => ", no new tables",
            (false, true) => ", adopting existing tables",
            (false, false) => "",
        },
    );
    if files.tls.is_none() {
        tracing::warn!(
            "serving plain HTTP: bearer tokens travel in clear text unless a TLS proxy \
             is in front (or give --tls-cert and --tls-key)"
        );
    }
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = match files.tls {
        None => tokio::spawn(server.serve(listener, async {
            let _ = stopped.await;
        })),
        Some(config) => serve_tls(server, listener, config, stopped)?,
    };
    // The line a supervisor or a test waits for.
    out(&format!("listening on {scheme}://{addr}"));
    Ok(Running { task, stop })
}

/// Serve HTTPS with `config` until `stopped`, then finish the requests in
/// flight (the caller bounds how long).
fn serve_tls(
    server: HubServer,
    listener: tokio::net::TcpListener,
    config: Arc<rustls::ServerConfig>,
    stopped: tokio::sync::oneshot::Receiver<()>,
) -> Result<JoinHandle<std::io::Result<()>>, Failure> {
    let listener = listener
        .into_std()
        .map_err(|e| Failure::runtime(format!("cannot listen: {e}")))?;
    let handle = axum_server::Handle::new();
    let tls = axum_server::tls_rustls::RustlsConfig::from_config(config);
    let https = axum_server::tls_rustls::from_tcp_rustls(listener, tls)
        .map_err(|e| Failure::runtime(format!("cannot listen: {e}")))?
        .handle(handle.clone())
        .accept_error_handler(|peer, e| {
            // A client that does not speak TLS, or distrusts the certificate.
            match peer {
                Some(peer) => tracing::debug!("TLS handshake with {peer} failed: {e}"),
                None => tracing::debug!("TLS handshake failed: {e}"),
            }
        });
    let router = server.router();
    tokio::spawn(async move {
        let _ = stopped.await;
        handle.graceful_shutdown(None);
    });
    Ok(tokio::spawn(https.serve(router.into_make_service())))
}

/// SIGTERM and Ctrl-C (SIGINT), listened for from the start: one that
/// comes before the server is up is not lost.
struct Signals {
    #[cfg(unix)]
    term: tokio::signal::unix::Signal,
    #[cfg(unix)]
    int: tokio::signal::unix::Signal,
}

impl Signals {
    fn new() -> Result<Self, Failure> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            let listen = |kind, name| {
                signal(kind).map_err(|e| Failure::runtime(format!("cannot listen for {name}: {e}")))
            };
            Ok(Signals {
                term: listen(SignalKind::terminate(), "SIGTERM")?,
                int: listen(SignalKind::interrupt(), "SIGINT")?,
            })
        }
        #[cfg(not(unix))]
        Ok(Signals {})
    }

    /// The next signal, by name.
    async fn next(&mut self) -> &'static str {
        #[cfg(unix)]
        {
            tokio::select! {
                _ = self.term.recv() => "SIGTERM",
                _ = self.int.recv() => "SIGINT",
            }
        }
        #[cfg(not(unix))]
        {
            match tokio::signal::ctrl_c().await {
                Ok(()) => "Ctrl-C",
                Err(_) => std::future::pending().await,
            }
        }
    }
}

/// The hub database's product and version, for the startup line.
async fn dialect(hub: &SqlHub) -> String {
    let db = hub.connection();
    let (name, sql) = match db.get_database_backend() {
        DbBackend::Postgres => ("PostgreSQL", "SELECT version() AS v"),
        DbBackend::MySql => ("MySQL/MariaDB", "SELECT version() AS v"),
        DbBackend::Sqlite => ("SQLite", "SELECT sqlite_version() AS v"),
        _ => return "SQL".to_owned(),
    };
    let version = db
        .query_one_raw(Statement::from_string(db.get_database_backend(), sql))
        .await
        .ok()
        .flatten()
        .and_then(|r| r.try_get::<String>("", "v").ok());
    match version {
        // PostgreSQL's is a sentence: its first two words.
        Some(v) if name == "PostgreSQL" => {
            v.split_whitespace().take(2).collect::<Vec<_>>().join(" ")
        }
        // `10.11.6-MariaDB-0+deb12u1`: the release alone.
        Some(v) if v.contains("MariaDB") => {
            format!("MariaDB {}", v.split('-').next().unwrap_or(&v))
        }
        Some(v) if name == "SQLite" => format!("SQLite {v}"),
        Some(v) => format!("MySQL {v}"),
        None => name.to_owned(),
    }
}

/// The TLS configuration and the JWT key, from their files.
fn read_files(args: &ServeArgs) -> Result<Files, Failure> {
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => Some(tls_config(cert, key)?),
        // clap requires both or neither.
        _ => None,
    };
    let mut jwt = match (&args.jwt_hs256_secret_file, &args.jwt_rs256_public_key) {
        (Some(path), _) => {
            let mut secret = read(path, "the JWT secret")?;
            while secret.last().is_some_and(|b| matches!(b, b'\n' | b'\r')) {
                secret.pop();
            }
            if secret.is_empty() {
                return Err(Failure::runtime(format!(
                    "the JWT secret file {} is empty",
                    path.display()
                )));
            }
            if secret.len() < 32 {
                tracing::warn!(
                    "the JWT secret in {} is {} bytes: use at least 32 random bytes",
                    path.display(),
                    secret.len()
                );
            }
            Some(JwtKey::hs256(&secret))
        }
        (None, Some(path)) => {
            let pem = read(path, "the JWT public key")?;
            Some(
                JwtKey::rs256_pem(&pem)
                    .map_err(|e| Failure::runtime(format!("{}: {e}", path.display())))?,
            )
        }
        (None, None) => None,
    };
    if let Some(key) = jwt.take() {
        let mut key = key;
        if let Some(iss) = &args.jwt_issuer {
            key = key.issuer(iss);
        }
        if let Some(aud) = &args.jwt_audience {
            key = key.audience(aud);
        }
        jwt = Some(key);
    }
    Ok(Files { tls, jwt })
}

fn read(path: &Path, what: &str) -> Result<Vec<u8>, Failure> {
    std::fs::read(path)
        .map_err(|e| Failure::runtime(format!("cannot read {what} {}: {e}", path.display())))
}

/// A rustls server configuration (ring, TLS 1.2 and 1.3, HTTP/2 and
/// HTTP/1.1 by ALPN) from PEM files.
fn tls_config(cert: &Path, key: &Path) -> Result<Arc<rustls::ServerConfig>, Failure> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let cert_pem = read(cert, "the TLS certificate")?;
    let key_pem = read(key, "the TLS key")?;
    let chain = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| Failure::runtime(format!("the TLS certificate {}: {e}", cert.display())))?;
    if chain.is_empty() {
        return Err(Failure::runtime(format!(
            "the TLS certificate {} holds no certificate (expected PEM: \
             -----BEGIN CERTIFICATE-----)",
            cert.display()
        )));
    }
    let private = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| {
        Failure::runtime(format!(
            "the TLS key {} holds no usable private key (PKCS#8, PKCS#1 or SEC1 PEM): {e}",
            key.display()
        ))
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| Failure::runtime(format!("TLS: {e}")))?
        .with_no_client_auth()
        .with_single_cert(chain, private)
        .map_err(|e| {
            Failure::runtime(format!(
                "the TLS certificate {} and key {} do not go together: {e}",
                cert.display(),
                key.display()
            ))
        })?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}
