//! The hub database URL: checked, completed, and shown without its
//! password.

/// The schemes a hub database URL may have.
const SCHEMES: [&str; 5] = [
    "postgres://",
    "postgresql://",
    "mysql://",
    "mariadb://",
    "sqlite:",
];

/// Query parameters whose values are secrets.
const SECRET_PARAMS: [&str; 4] = ["password", "pass", "pwd", "sslpassword"];

/// What replaces a secret in anything shown.
const MASK: &str = "***";

/// A hub database URL.
#[derive(Clone)]
pub(crate) struct DbUrl {
    url: String,
}

impl std::fmt::Debug for DbUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.masked())
    }
}

impl std::fmt::Display for DbUrl {
    /// The URL with its password masked.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.masked())
    }
}

impl DbUrl {
    /// `url` checked. A `sqlite:` URL without a `mode` is given
    /// `mode=rwc` (the file is created if missing), and `mariadb://` is
    /// read as `mysql://` (one driver serves both).
    ///
    /// The error never repeats the URL (it may hold a password).
    pub(crate) fn parse(url: &str) -> Result<DbUrl, String> {
        let url = url.trim();
        if url.is_empty() {
            return Err("the hub database URL is empty".into());
        }
        if !SCHEMES.iter().any(|s| url.starts_with(s)) {
            let scheme = url.split_once(':').map_or("none", |(s, _)| s);
            let scheme = if scheme.len() > 20 || scheme.contains(['/', '@']) {
                "none"
            } else {
                scheme
            };
            return Err(format!(
                "the hub database URL has scheme `{scheme}`: expected postgres://, \
                 mysql:// (or mariadb://) or sqlite:"
            ));
        }
        let mut url = match url.strip_prefix("mariadb://") {
            Some(rest) => format!("mysql://{rest}"),
            None => url.to_owned(),
        };
        if url.starts_with("sqlite:") && !url.contains(":memory:") && !has_param(&url, "mode") {
            url.push(if url.contains('?') { '&' } else { '?' });
            url.push_str("mode=rwc");
        }
        Ok(DbUrl { url })
    }

    /// The URL itself, password and all: only for connecting.
    pub(crate) fn expose(&self) -> &str {
        &self.url
    }

    /// The URL with the password (of the user part and of the query)
    /// masked.
    pub(crate) fn masked(&self) -> String {
        let parts = Parts::of(&self.url);
        let mut out = String::with_capacity(self.url.len());
        out.push_str(&self.url[..parts.authority.0]);
        let authority = &self.url[parts.authority.0..parts.authority.1];
        match authority.rsplit_once('@') {
            Some((userinfo, host)) => {
                match userinfo.split_once(':') {
                    Some((user, _)) => {
                        out.push_str(user);
                        out.push(':');
                        out.push_str(MASK);
                    }
                    None => out.push_str(userinfo),
                }
                out.push('@');
                out.push_str(host);
            }
            None => out.push_str(authority),
        }
        out.push_str(&self.url[parts.authority.1..parts.query.0]);
        let query = &self.url[parts.query.0..parts.query.1];
        let params: Vec<String> = query
            .split('&')
            .map(|p| match p.split_once('=') {
                Some((k, _)) if is_secret_param(k) => format!("{k}={MASK}"),
                _ => p.to_owned(),
            })
            .collect();
        out.push_str(&params.join("&"));
        out.push_str(&self.url[parts.query.1..]);
        out
    }

    /// The host (and port) of a server URL; `None` for SQLite.
    pub(crate) fn host(&self) -> Option<String> {
        let parts = Parts::of(&self.url);
        let authority = &self.url[parts.authority.0..parts.authority.1];
        if authority.is_empty() {
            return None;
        }
        let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
        Some(if host.is_empty() {
            "localhost".to_owned()
        } else {
            host.to_owned()
        })
    }

    /// The `host:port` to try a TCP connection to before connecting (a
    /// quick, clear error when nothing listens): `None` for SQLite, a
    /// socket path (no host, or one given in the query), or several hosts.
    pub(crate) fn tcp_addr(&self) -> Option<String> {
        let host = self.host()?;
        let parts = Parts::of(&self.url);
        let authority = &self.url[parts.authority.0..parts.authority.1];
        let named = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
        // The driver's own default (a socket, PGHOST), or the query's
        // host, port or socket: the driver knows better than a probe.
        let overridden = self.url[parts.query.0..parts.query.1]
            .split('&')
            .filter_map(|p| p.split('=').next())
            .any(|k| {
                ["host", "hostaddr", "port", "socket"]
                    .iter()
                    .any(|o| k.eq_ignore_ascii_case(o))
            });
        if named.is_empty() || overridden || host.contains(',') || host.contains('%') {
            return None;
        }
        let has_port = match host.rfind(':') {
            Some(i) => {
                let port = &host[i + 1..];
                !port.is_empty()
                    && port.bytes().all(|b| b.is_ascii_digit())
                    && (!host.starts_with('[') || host[..i].ends_with(']'))
            }
            None => false,
        };
        if has_port {
            return Some(host);
        }
        let port = if self.url.starts_with("mysql://") {
            3306
        } else {
            5432
        };
        Some(format!("{host}:{port}"))
    }

    /// `text` (an error message of a driver) with every form of the
    /// URL's secrets masked.
    pub(crate) fn scrub(&self, text: &str) -> String {
        let mut out = text.replace(&self.url, &self.masked());
        for secret in self.secrets() {
            // Short secrets would mask unrelated text; they are also the
            // least likely to be echoed by a driver.
            if secret.len() >= 3 {
                out = out.replace(&secret, MASK);
            }
        }
        out
    }

    /// The secrets in the URL, as written and percent-decoded.
    fn secrets(&self) -> Vec<String> {
        let parts = Parts::of(&self.url);
        let authority = &self.url[parts.authority.0..parts.authority.1];
        let mut raw = Vec::new();
        if let Some((userinfo, _)) = authority.rsplit_once('@')
            && let Some((_, password)) = userinfo.split_once(':')
        {
            raw.push(password.to_owned());
        }
        for p in self.url[parts.query.0..parts.query.1].split('&') {
            if let Some((k, v)) = p.split_once('=')
                && is_secret_param(k)
            {
                raw.push(v.to_owned());
            }
        }
        let mut out = Vec::new();
        for r in raw {
            let decoded = percent_decode(&r);
            if decoded != r {
                out.push(decoded);
            }
            out.push(r);
        }
        out.retain(|s| !s.is_empty());
        // Longest first: a secret that contains another is masked whole.
        out.sort_by_key(|s| std::cmp::Reverse(s.len()));
        out
    }
}

/// Where the authority (`user:pass@host:port`) and the query are in a URL:
/// byte ranges, empty when absent.
struct Parts {
    authority: (usize, usize),
    query: (usize, usize),
}

impl Parts {
    fn of(url: &str) -> Parts {
        let end = url.find('#').unwrap_or(url.len());
        let authority = match url.find("://") {
            Some(i) => {
                let start = i + 3;
                let stop = url[start..end].find(['/', '?']).map_or(end, |j| start + j);
                (start, stop)
            }
            None => (0, 0),
        };
        let query = match url[authority.1..end].find('?') {
            Some(i) => (authority.1 + i + 1, end),
            None => (end, end),
        };
        Parts { authority, query }
    }
}

fn is_secret_param(key: &str) -> bool {
    SECRET_PARAMS.iter().any(|s| key.eq_ignore_ascii_case(s))
}

fn has_param(url: &str, key: &str) -> bool {
    url.split_once('?').is_some_and(|(_, q)| {
        q.split('&')
            .any(|p| p.split('=').next().is_some_and(|k| k == key))
    })
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let (Some(hi), Some(lo)) = (hex(bytes[i + 1]), hex(bytes[i + 2]))
        {
            out.push(hi << 4 | lo);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn hex(b: u8) -> Option<u8> {
    (b as char).to_digit(16).map(|d| d as u8)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(s: &str) -> DbUrl {
        DbUrl::parse(s).unwrap()
    }

    #[test]
    fn the_password_is_masked_and_the_rest_kept() {
        for (given, shown) in [
            (
                "postgres://hub:s3cret@db.internal:5432/hub",
                "postgres://hub:***@db.internal:5432/hub",
            ),
            (
                "mysql://root:p%40ss@127.0.0.1/test?ssl-mode=disabled",
                "mysql://root:***@127.0.0.1/test?ssl-mode=disabled",
            ),
            (
                "postgres://hub@db/hub?password=s3cret&sslmode=require",
                "postgres://hub@db/hub?password=***&sslmode=require",
            ),
            ("postgres://u:a:b@c@host/db", "postgres://u:***@host/db"),
            ("postgres://hub@db/hub", "postgres://hub@db/hub"),
            ("postgres://db", "postgres://db"),
            (
                "sqlite:///var/lib/hub.db?mode=rwc",
                "sqlite:///var/lib/hub.db?mode=rwc",
            ),
        ] {
            assert_eq!(url(given).masked(), shown, "{given}");
            assert_eq!(format!("{}", url(given)), shown);
            assert_eq!(format!("{:?}", url(given)), shown);
        }
    }

    #[test]
    fn hosts_are_named_and_sqlite_has_none() {
        assert_eq!(
            url("postgres://hub:pw@db.internal:5432/hub")
                .host()
                .as_deref(),
            Some("db.internal:5432")
        );
        assert_eq!(
            url("mysql://root@[::1]:3306/x").host().as_deref(),
            Some("[::1]:3306")
        );
        assert_eq!(
            url("postgres:///hub").host().as_deref(),
            None,
            "no authority at all"
        );
        assert_eq!(url("sqlite:hub.db").host(), None);
        assert_eq!(url("sqlite:///tmp/hub.db").host(), None);
    }

    #[test]
    fn servers_are_probed_on_their_port() {
        for (given, addr) in [
            ("postgres://hub:pw@db:6543/hub", Some("db:6543")),
            ("postgres://hub:pw@db/hub", Some("db:5432")),
            ("postgresql://db", Some("db:5432")),
            ("mysql://root@127.0.0.1/x", Some("127.0.0.1:3306")),
            ("mariadb://root@[::1]/x", Some("[::1]:3306")),
            ("mysql://root@[::1]:3307/x", Some("[::1]:3307")),
            ("postgres://u@h1:5432,h2:5432/db", None),
            ("postgres://u@/db?host=/var/run/postgresql", None),
            ("postgres://u@/db", None),
            ("postgres://u@db/db?port=6543", None),
            (
                "mysql://u@localhost/db?socket=/run/mysqld/mysqld.sock",
                None,
            ),
            ("sqlite:hub.db", None),
        ] {
            assert_eq!(url(given).tcp_addr().as_deref(), addr, "{given}");
        }
    }

    #[test]
    fn sqlite_urls_create_their_file_and_mariadb_is_mysql() {
        assert_eq!(url("sqlite:hub.db").expose(), "sqlite:hub.db?mode=rwc");
        assert_eq!(
            url("sqlite:///x/hub.db?cache=shared").expose(),
            "sqlite:///x/hub.db?cache=shared&mode=rwc"
        );
        assert_eq!(
            url("sqlite:hub.db?mode=ro").expose(),
            "sqlite:hub.db?mode=ro"
        );
        assert_eq!(url("sqlite::memory:").expose(), "sqlite::memory:");
        assert_eq!(url("mariadb://u@h/db").expose(), "mysql://u@h/db");
    }

    #[test]
    fn other_schemes_are_refused_without_repeating_the_url() {
        for bad in [
            "",
            "  ",
            "http://u:hunter2@host/db",
            "hub.db",
            "u:hunter2@host/db",
        ] {
            let e = DbUrl::parse(bad).unwrap_err();
            assert!(!e.contains("hunter2"), "{e}");
        }
        assert!(
            DbUrl::parse("http://u:hunter2@host/db")
                .unwrap_err()
                .contains("`http`")
        );
    }

    #[test]
    fn driver_messages_are_scrubbed_of_every_form_of_the_password() {
        let u = url("postgres://hub:p%40ss!word@db/hub?password=other");
        let text = "failed for postgres://hub:p%40ss!word@db/hub?password=other: \
                    bad password p@ss!word, p%40ss!word or other";
        let scrubbed = u.scrub(text);
        for secret in ["p@ss!word", "p%40ss!word", "other"] {
            assert!(!scrubbed.contains(secret), "{scrubbed}");
        }
        assert!(scrubbed.contains("postgres://hub:***@db/hub"), "{scrubbed}");
    }

    #[test]
    fn percent_decoding_leaves_broken_escapes() {
        assert_eq!(percent_decode("a%40b"), "a@b");
        assert_eq!(percent_decode("a%4"), "a%4");
        assert_eq!(percent_decode("%zz%"), "%zz%");
        assert_eq!(percent_decode("%é1"), "%é1");
    }
}
