//! `session.redis_url`: one Redis (`redis://`), a Sentinel set (`redis+sentinel://`) or a
//! Cluster (`redis+cluster://`), parsed at load into a [`RedisTarget`] so that `check-config`
//! refuses what `run` could not connect with. A password never comes from the URL (it would
//! end up in logs and `check-config`'s output): only from a `redis_password_file` key.

use std::fmt;

use url::Url;

/// Where the session store's Redis is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RedisTarget {
    /// `redis://[user@]host:port/db`, as written (redis-rs parses it).
    Single(String),
    /// Sentinels that name the master of `service`; the gate follows it across failovers.
    Sentinel {
        /// The ACL user, on the Sentinels and on the data nodes.
        username: Option<String>,
        /// The Sentinels to ask, in order.
        sentinels: Vec<HostPort>,
        /// The name the Sentinels monitor the master under.
        service: String,
        /// The database on the data nodes.
        db: u32,
    },
    /// Seed nodes of a Cluster (database 0, the only one a Cluster has).
    Cluster {
        /// The ACL user on every node.
        username: Option<String>,
        /// Where to read the slot map first; the rest of the Cluster is found from it.
        nodes: Vec<HostPort>,
    },
}

/// A host (name, IPv4, or IPv6 without brackets), normalised, and a port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostPort {
    /// A name, an IPv4 address or an IPv6 address (without brackets).
    pub host: String,
    /// The TCP port.
    pub port: u16,
}

impl fmt::Display for HostPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

const SENTINEL: &str = "redis+sentinel://";
const CLUSTER: &str = "redis+cluster://";
/// Sentinel's and Redis's own default ports, for an address written without one.
const SENTINEL_PORT: u16 = 26379;
const REDIS_PORT: u16 = 6379;

impl fmt::Display for RedisTarget {
    /// The URL that parses back to this target (printed by `check-config`).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let hosts = |list: &[HostPort]| {
            let all: Vec<String> = list.iter().map(ToString::to_string).collect();
            all.join(",")
        };
        let user = |u: &Option<String>| u.as_ref().map(|u| format!("{u}@")).unwrap_or_default();
        match self {
            RedisTarget::Single(url) => f.write_str(url),
            RedisTarget::Sentinel {
                username,
                sentinels,
                service,
                db,
            } => write!(
                f,
                "{SENTINEL}{}{}/{service}/{db}",
                user(username),
                hosts(sentinels)
            ),
            RedisTarget::Cluster { username, nodes } => {
                write!(f, "{CLUSTER}{}{}", user(username), hosts(nodes))
            }
        }
    }
}

/// Why a Redis URL was refused: every problem, separated by `; `. Never holds the URL (it may
/// hold a password) or its user part.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct RedisUrlError(String);

impl RedisTarget {
    /// Parses `text`, listing every problem in one message; never echoes the URL (it may hold
    /// a password) or the user part.
    ///
    /// # Errors
    ///
    /// What is wrong with `text`, problems separated by `; `.
    pub fn parse(text: &str) -> Result<RedisTarget, RedisUrlError> {
        Self::parse_text(text).map_err(RedisUrlError)
    }

    fn parse_text(text: &str) -> Result<RedisTarget, String> {
        if let Some(rest) = text.strip_prefix(SENTINEL) {
            let (username, hosts, path) = split(rest, SENTINEL_PORT)?;
            let mut problems = hosts.as_ref().err().cloned().unwrap_or_default();
            let mut parts = path.split('/');
            let service = parts.next().unwrap_or_default().to_owned();
            let ok = |b: u8| b.is_ascii_alphanumeric() || b"-_.".contains(&b);
            if service.is_empty() || !service.bytes().all(ok) {
                problems.push(
                    "needs the master's service name after the hosts (letters, digits, - _ .): \
                     redis+sentinel://[user@]host:port[,host:port...]/service_name[/db]"
                        .to_owned(),
                );
            }
            let db = match (parts.next(), parts.next()) {
                (None | Some(""), None) => 0,
                (Some(db), None) => db.parse().unwrap_or_else(|_| {
                    problems.push(format!("database {db:?} is not a number"));
                    0
                }),
                _ => {
                    problems.push("has more than service_name/db after the hosts".to_owned());
                    0
                }
            };
            match hosts {
                Ok(sentinels) if problems.is_empty() => Ok(RedisTarget::Sentinel {
                    username,
                    sentinels,
                    service,
                    db,
                }),
                _ => Err(problems.join("; ")),
            }
        } else if let Some(rest) = text.strip_prefix(CLUSTER) {
            let (username, hosts, path) = split(rest, REDIS_PORT)?;
            let mut problems = hosts.as_ref().err().cloned().unwrap_or_default();
            if !path.is_empty() {
                problems.push(
                    "takes no path: a Cluster has database 0 only \
                     (redis+cluster://[user@]host:port[,host:port...])"
                        .to_owned(),
                );
            }
            match hosts {
                Ok(nodes) if problems.is_empty() => Ok(RedisTarget::Cluster { username, nodes }),
                _ => Err(problems.join("; ")),
            }
        } else {
            single(text).map(|()| RedisTarget::Single(text.to_owned()))
        }
    }
}

/// A `redis://` URL that redis-rs accepts, without a password.
fn single(text: &str) -> Result<(), String> {
    let u = Url::parse(text).map_err(|e| format!("invalid URL: {e}"))?;
    match u.scheme() {
        "redis" => {}
        "rediss" => {
            return Err(
                "rediss:// (TLS to Redis) is not supported: reach Redis over a \
                        private network with redis://"
                    .to_owned(),
            )
        }
        _ => {
            return Err("must be a redis://, redis+sentinel:// or redis+cluster:// URL".to_owned())
        }
    }
    let password_in_query = u
        .query_pairs()
        .any(|(k, _)| k.eq_ignore_ascii_case("password") || k.eq_ignore_ascii_case("pass"));
    if u.password().is_some() || password_in_query {
        return Err("must not hold a password; name a file holding it in the redis_password_file next to this URL".to_owned());
    }
    redis::IntoConnectionInfo::into_connection_info(text)
        .map_err(|e| format!("not a Redis URL: {e}"))?;
    Ok(())
}

type Hosts = Result<Vec<HostPort>, Vec<String>>;

/// Splits `[user@]host:port[,host:port...][/path]` into the user, the addresses (or every
/// problem with them) and the path. Fails at once on what must not be echoed: a password, a
/// query or a fragment.
fn split(rest: &str, default_port: u16) -> Result<(Option<String>, Hosts, &str), String> {
    if rest.contains(['?', '#']) {
        return Err("takes no query or fragment".to_owned());
    }
    let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
    let (user, hosts) = match authority.rsplit_once('@') {
        Some((user, hosts)) => (Some(user), hosts),
        None => (None, authority),
    };
    let mut problems = Vec::new();
    let username = match user {
        Some(u) if u.contains(':') => {
            return Err("must not hold a password; name a file holding it in the redis_password_file next to this URL".to_owned())
        }
        Some(u) if u.is_empty() || !u.bytes().all(|b| b.is_ascii_graphic() && b != b'%') => {
            problems.push("the user name must be printable ASCII, not empty".to_owned());
            None
        }
        u => u.map(str::to_owned),
    };
    let mut list = Vec::new();
    for entry in hosts.split(',') {
        match host_port(entry, default_port) {
            Ok(hp) => list.push(hp),
            Err(e) => problems.push(e),
        }
    }
    let hosts = if problems.is_empty() {
        Ok(list)
    } else {
        Err(problems)
    };
    Ok((username, hosts, path.trim_end_matches('/')))
}

/// `host[:port]` or `[v6][:port]`.
fn host_port(entry: &str, default_port: u16) -> Result<HostPort, String> {
    let bad = || format!("{entry:?} is not host:port");
    let (host, port) = if let Some(v6) = entry.strip_prefix('[') {
        let (host, after) = v6.split_once(']').ok_or_else(bad)?;
        match after {
            "" => (host, None),
            p => (host, Some(p.strip_prefix(':').ok_or_else(bad)?)),
        }
    } else {
        match entry.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (entry, None),
        }
    };
    let port = match port {
        None => default_port,
        Some(p) => p
            .parse()
            .ok()
            .filter(|&p| p != 0)
            .ok_or_else(|| format!("{entry:?}: port {p:?} is not 1-65535"))?,
    };
    // Normalised the way a URL's host is (lower case, IDNA, IPv4 canonical), so that the
    // printed URL names what is dialled and loads back the same.
    let host = if host.contains(':') {
        host.parse::<std::net::Ipv6Addr>()
            .map_err(|_| bad())?
            .to_string()
    } else {
        match url::Host::parse(host) {
            Ok(h) if !host.is_empty() && !host.contains('%') => h.to_string(),
            _ => return Err(bad()),
        }
    };
    Ok(HostPort { host, port })
}
