//! `tidesync-hub`: a tidesync hub database served over HTTP(S) to devices
//! with accounts, and the tokens of those accounts.
//!
//! ```text
//! tidesync-hub --db URL serve [--listen ADDR] [--tls-cert PEM --tls-key PEM] ...
//! tidesync-hub --db URL token add USER      # the token, alone on stdout
//! tidesync-hub --db URL token list          # id, user, created
//! tidesync-hub --db URL token revoke TOKEN|ID|USER
//! ```
//!
//! Exit codes: 0 on success, 1 on a runtime error (the database cannot be
//! reached, a file cannot be read, nothing to revoke), 2 on a usage error.
//! See `tidesync-hub --help` and the package's README.

mod dburl;
mod serve;
mod token;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, CommandFactory, Parser, Subcommand, ValueEnum};
use dburl::DbUrl;

/// The exit code of a runtime error.
const RUNTIME_ERROR: u8 = 1;

const AFTER_HELP: &str = "\
Examples:
  export TIDESYNC_HUB_DB='postgres://hub:PASSWORD@db.internal/hub'
  tidesync-hub token add alice          # prints alice's new token
  tidesync-hub serve --listen 0.0.0.0:8443 --tls-cert cert.pem --tls-key key.pem

Exit codes: 0 success, 1 runtime error, 2 usage error.";

/// Serve a tidesync hub database over HTTP(S) to devices with accounts.
///
/// Devices sync through this server with `HttpBackend` and a bearer token
/// (made with `token add`, or a JWT of your identity provider): they never
/// hold the database's credentials, and each user reads and writes only
/// their own rows of the tables that declare an owner.
#[derive(Debug, Parser)]
#[command(name = "tidesync-hub", version, after_help = AFTER_HELP)]
struct Cli {
    /// The hub database: postgres://USER:PASS@HOST/DB, mysql://... (or
    /// mariadb://...), or sqlite:PATH (created if missing). Shown only with
    /// its password masked.
    #[arg(
        long,
        global = true,
        env = "TIDESYNC_HUB_DB",
        hide_env_values = true,
        value_name = "URL"
    )]
    db: Option<String>,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve the hub over HTTP, or HTTPS with --tls-cert and --tls-key,
    /// until SIGTERM or Ctrl-C.
    ///
    /// Prints `listening on http(s)://ADDRESS` on stdout once it accepts
    /// connections; logs go to stderr (RUST_LOG, default `info`). On
    /// SIGTERM or Ctrl-C it stops accepting, finishes the requests in
    /// flight (at most --shutdown-grace seconds) and exits 0. GET /health
    /// answers `ok` for load balancers.
    Serve(ServeArgs),
    /// Manage the bearer tokens of the hub's users (kept in the hub
    /// database as hashes).
    #[command(subcommand)]
    Token(TokenCommand),
}

/// What a refused change does to the stream of the device that pushed it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Policy {
    /// Stop that device's stream at the change: it and the changes after
    /// it wait on the device until the cause is fixed.
    Halt,
    /// Park the change on the hub with its reason and go on.
    Park,
}

#[derive(Debug, Args)]
#[command(group = clap::ArgGroup::new("jwt").multiple(false))]
struct ServeArgs {
    /// The address to listen on, IP:PORT (0.0.0.0:8080, [::]:8080). Port 0
    /// takes a free port: the one taken is printed.
    #[arg(long, value_name = "IP:PORT", default_value = "127.0.0.1:8080")]
    listen: SocketAddr,

    /// Serve HTTPS with this certificate chain (PEM, leaf first); needs
    /// --tls-key. Without it the server speaks plain HTTP: put it behind a
    /// TLS proxy, as tokens travel in every request.
    #[arg(long, value_name = "PEM", requires = "tls_key")]
    tls_cert: Option<PathBuf>,

    /// The private key of --tls-cert (PEM: PKCS#8, PKCS#1 or SEC1).
    #[arg(long, value_name = "PEM", requires = "tls_cert")]
    tls_key: Option<PathBuf>,

    /// The largest request body accepted, compressed or not; larger pushes
    /// are split by the devices.
    #[arg(
        long,
        value_name = "BYTES",
        default_value_t = sync_http::server::DEFAULT_MAX_BODY as u64,
        value_parser = clap::value_parser!(u64).range(1024..=(u32::MAX as u64))
    )]
    max_body_bytes: u64,

    /// How long a client may take to send a request body, in seconds.
    #[arg(
        long,
        value_name = "SECS",
        default_value_t = 60,
        value_parser = clap::value_parser!(u64).range(1..=3600)
    )]
    body_timeout: u64,

    /// What a change the hub refuses (another user's row, a bad value)
    /// does to the stream of the device that pushed it.
    #[arg(long, value_enum, default_value_t = Policy::Halt)]
    policy: Policy,

    /// Serve tables that declare no ownership as shared by every user
    /// (otherwise a device installing one is refused).
    #[arg(long)]
    share_undeclared: bool,

    /// Install no table the hub database lacks: devices sync only the
    /// tables an operator installed first (a direct install, or once
    /// through a server without this option). A device naming another
    /// table is refused, and nothing of its install is made.
    #[arg(long, conflicts_with = "adopt_existing_tables")]
    no_new_tables: bool,

    /// Let a device's install adopt a table that already exists in the hub
    /// database though tidesync did not create it (one an operator made by
    /// hand). Without it such a table is refused: it may be the
    /// application's own. Adopting is installing a new table, so not with
    /// --no-new-tables.
    #[arg(long)]
    adopt_existing_tables: bool,

    /// Accept JWTs signed with HS256 by this shared secret (the file's
    /// bytes, without a trailing newline) as well as the hub's own tokens.
    /// The JWT's `sub` is the user; `exp` is required.
    #[arg(long, value_name = "FILE", group = "jwt")]
    jwt_hs256_secret_file: Option<PathBuf>,

    /// Accept JWTs signed with RS256, verified by this public key (PEM) of
    /// your identity provider.
    #[arg(long, value_name = "PEM", group = "jwt")]
    jwt_rs256_public_key: Option<PathBuf>,

    /// Accept only JWTs issued by this issuer (`iss`).
    #[arg(long, value_name = "ISS", requires = "jwt")]
    jwt_issuer: Option<String>,

    /// Accept only JWTs for this audience (`aud`).
    #[arg(long, value_name = "AUD", requires = "jwt")]
    jwt_audience: Option<String>,

    /// After SIGTERM or Ctrl-C, how long the requests in flight may take
    /// to finish, in seconds (a second signal stops at once).
    #[arg(
        long,
        value_name = "SECS",
        default_value_t = 30,
        value_parser = clap::value_parser!(u64).range(0..=3600)
    )]
    shutdown_grace: u64,
}

#[derive(Debug, Subcommand)]
enum TokenCommand {
    /// Make a token for USER and print it, alone, on stdout (the only
    /// time it is shown: the hub keeps its hash).
    Add {
        /// The user the token signs in: 1 to 255 bytes, no control
        /// characters. Devices of one user share that user's rows.
        #[arg(value_parser = user_name)]
        user: String,
    },
    /// List the tokens: id, user, creation time (never a secret).
    List,
    /// Revoke a token (whole, or by its id), or every token of a user.
    /// Prints how many were revoked; exits 1 if none was.
    Revoke {
        /// A token (`tsk_...`), a token id (16 hex digits, see `list`), a
        /// user name, or `-` to read the token from stdin (keeps it out of
        /// the process list and shell history).
        #[arg(value_name = "TOKEN|ID|USER")]
        target: String,
    },
}

/// The user names the hub accepts.
fn user_name(s: &str) -> Result<String, String> {
    if s.is_empty() || s.len() > 255 || s.chars().any(char::is_control) {
        return Err("a user name is 1 to 255 bytes without control characters".into());
    }
    Ok(s.to_owned())
}

/// Why a command failed.
#[derive(Debug)]
enum Failure {
    /// A usage error: reported by clap's rules, exit 2.
    Usage(clap::error::ErrorKind, String),
    /// A runtime error: exit 1.
    Runtime(String),
}

impl Failure {
    fn runtime(message: impl Into<String>) -> Self {
        Failure::Runtime(message.into())
    }
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        // Help and version exit 0, usage errors 2.
        Err(e) => e.exit(),
    };
    match run(cli) {
        Ok(code) => code,
        Err(Failure::Usage(kind, message)) => Cli::command().error(kind, message).exit(),
        Err(Failure::Runtime(message)) => {
            eprintln!("tidesync-hub: error: {message}");
            ExitCode::from(RUNTIME_ERROR)
        }
    }
}

fn run(cli: Cli) -> Result<ExitCode, Failure> {
    let db = match cli.db.as_deref() {
        Some(url) => DbUrl::parse(url)
            .map_err(|m| Failure::Usage(clap::error::ErrorKind::ValueValidation, m))?,
        None => {
            return Err(Failure::Usage(
                clap::error::ErrorKind::MissingRequiredArgument,
                "the hub database is required: --db URL or TIDESYNC_HUB_DB".into(),
            ));
        }
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| Failure::runtime(format!("cannot start the async runtime: {e}")))?;
    let result = match cli.command {
        Command::Serve(args) => {
            init_logging("info");
            runtime.block_on(serve::run(&db, args))
        }
        Command::Token(command) => {
            init_logging("warn");
            runtime.block_on(token::run(&db, command))
        }
    };
    // Everything the command does is done: do not wait for what a
    // connection pool leaves behind (a blocking task would hold the exit
    // for a second).
    runtime.shutdown_background();
    result
}

/// Logs to stderr, filtered by RUST_LOG (`default` when unset); the SQL
/// drivers' per-statement lines only at `debug`.
fn init_logging(default: &str) {
    use std::io::IsTerminal;
    use tracing_subscriber::EnvFilter;
    let filter = match std::env::var("RUST_LOG") {
        Ok(v) if !v.trim().is_empty() => EnvFilter::try_new(&v).unwrap_or_else(|e| {
            eprintln!("tidesync-hub: ignoring RUST_LOG ({e}); logging at {default}");
            quiet_drivers(default)
        }),
        _ => quiet_drivers(default),
    };
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .try_init();
}

fn quiet_drivers(level: &str) -> tracing_subscriber::EnvFilter {
    tracing_subscriber::EnvFilter::new(format!("{level},sqlx=warn,sea_orm=warn"))
}

/// Connect to the hub database, or an error naming the host (never the
/// password).
async fn connect(db: &DbUrl) -> Result<sync_core::hub::SqlHub, Failure> {
    use sync_core::Error;
    // A quick, clear answer when nothing listens there (the pool would
    // retry for ten seconds and say only that it timed out).
    if let (Some(addr), Some(host)) = (db.tcp_addr(), db.host()) {
        let probe = tokio::time::timeout(
            std::time::Duration::from_secs(10),
            tokio::net::TcpStream::connect(&addr),
        )
        .await;
        let why = match probe {
            Ok(Ok(_)) => None,
            Ok(Err(e)) => Some(e.to_string()),
            Err(_) => Some("no answer in 10 s".to_owned()),
        };
        if let Some(why) = why {
            return Err(Failure::runtime(format!(
                "cannot connect to the hub database on {host} ({db}): {why}"
            )));
        }
    }
    match sync_core::hub::SqlHub::connect(db.expose()).await {
        Ok(hub) => Ok(hub),
        Err(Error::Config(m)) => Err(Failure::runtime(format!(
            "the hub database URL {db} is not usable: {}",
            db.scrub(&m)
        ))),
        Err(e) => {
            let detail = db.scrub(&e.to_string());
            Err(Failure::runtime(match db.host() {
                Some(host) => {
                    format!("cannot connect to the hub database on {host} ({db}): {detail}")
                }
                None => format!("cannot open the hub database {db}: {detail}"),
            }))
        }
    }
}

/// A hub error as a runtime failure, scrubbed of the URL's secrets.
fn hub_failure(db: &DbUrl, what: &str, e: &sync_core::Error) -> Failure {
    let detail = db.scrub(&e.to_string());
    match (e, db.host()) {
        (sync_core::Error::Offline(_), Some(host)) => Failure::runtime(format!(
            "{what}: the hub database on {host} cannot be reached ({db}): {detail}"
        )),
        _ => Failure::runtime(format!("{what}: {detail}")),
    }
}

/// A line on stdout; a closed stdout (`| head`) is not an error worth a
/// panic.
fn out(line: &str) {
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    let _ = writeln!(stdout, "{line}");
    let _ = stdout.flush();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cli_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn user_names_follow_the_hubs_rule() {
        assert!(user_name("alice").is_ok());
        assert!(user_name("").is_err());
        assert!(user_name("a\nb").is_err());
        assert!(user_name(&"x".repeat(256)).is_err());
        assert!(user_name(&"x".repeat(255)).is_ok());
    }
}
