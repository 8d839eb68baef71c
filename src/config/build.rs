//! Assembling the sections: each key through its reader, then the checks that span keys (a
//! feature's required keys, pairs that go together, limits relative to each other), then the
//! parsing of what `run` would otherwise parse later (TLS material, the bouncer key).

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use toml::Value;
use url::Url;

use super::read::{self, Cx, Section};
use super::{
    Auth, Config, CookieSecret, Lapi, Provider, RateStoreKind, RedisServer, RedisTarget,
    SecretFile, Store, StoreKind, TlsFiles, GOOGLE_ISSUER_URL,
};
use crate::rules::{HostPattern, PathPrefix, Policy, Rule};

/// Builds the whole config from `root`, recording every problem in `cx`.
pub(super) fn build(root: &mut toml::Table, cx: &mut Cx<'_>) -> Config {
    let mut c = Config::default();
    server(&mut c, Section::take(root, "server", cx), cx);
    crowdsec(&mut c, Section::take(root, "crowdsec", cx), cx);
    let store = rate_limit(&mut c, Section::take(root, "rate_limit", cx), cx);
    let auth = AuthKeys::read(Section::take(root, "auth", cx), cx);
    let secret_given = session(&mut c, Section::take(root, "session", cx), cx);
    store.resolve(&mut c, cx);
    c.auth = auth.build(&mut c, secret_given, cx);
    log(&mut c, Section::take(root, "log", cx), cx);

    match root.remove("rules") {
        None => {}
        Some(Value::Array(items)) => {
            for (i, item) in items.into_iter().enumerate() {
                if let Some(rule) = rule(i, item, c.auth.is_some(), cx) {
                    c.rules.push(rule);
                }
            }
        }
        Some(_) => cx.err("rules", "must be an array of tables ([[rules]])"),
    }
    for key in root.keys() {
        cx.err(key, "unknown section");
    }
    c
}

fn server(c: &mut Config, mut s: Section, cx: &mut Cx<'_>) {
    let srv = &mut c.server;
    s.set("listen", cx, &mut srv.listen, |v, e| {
        let t = read::string(v, e)?;
        t.parse::<SocketAddr>()
            .map_err(|_| format!("expected address:port such as \"0.0.0.0:8080\", found {t:?}"))
    });
    srv.public_url = s.get("public_url", cx, read::web_url);
    s.set("trusted_proxies", cx, &mut srv.trusted_proxies, read::nets);
    s.set("max_header_bytes", cx, &mut srv.max_header_bytes, |v, e| {
        read::ranged(v, e, 1024, 1 << 20)
    });
    s.set(
        "header_read_timeout",
        cx,
        &mut srv.header_read_timeout,
        read::duration,
    );
    s.set("max_connections", cx, &mut srv.max_connections, |v, e| {
        read::ranged(v, e, 1, 1_000_000)
    });
    s.set("worker_threads", cx, &mut srv.worker_threads, |v, e| {
        read::ranged(v, e, 1, 1024)
    });
    // Whether each TLS key was written, whatever its value turned out to be: a file that cannot
    // be read is one problem, not also a missing partner.
    let (cert_given, key_given, ca_given) = (
        s.has("tls_cert_file"),
        s.has("tls_key_file"),
        s.has("tls_client_ca_file"),
    );
    let cert = s.get("tls_cert_file", cx, read::path);
    let key = s.get("tls_key_file", cx, read::path);
    let client_ca = s.get("tls_client_ca_file", cx, read::path);
    s.finish(cx);
    if cert_given != key_given {
        cx.err(
            "server.tls_cert_file",
            "tls_cert_file and tls_key_file go together (the listener's certificate and key)",
        );
    } else if ca_given && !cert_given {
        cx.err(
            "server.tls_client_ca_file",
            "needs tls_cert_file and tls_key_file (client certificates are asked for over TLS)",
        );
    }
    for (key, problem) in
        crate::tls::check(cert.as_deref().zip(key.as_deref()), client_ca.as_deref())
    {
        cx.err(key, problem.to_string());
    }
    if let (Some(cert), Some(key)) = (cert, key) {
        srv.tls = Some(TlsFiles {
            cert,
            key,
            client_ca,
        });
    }
    if srv.header_read_timeout.is_zero() {
        cx.err("server.header_read_timeout", "must be more than 0s");
    }
}

fn crowdsec(c: &mut Config, mut s: Section, cx: &mut Cx<'_>) {
    let cs = &mut c.crowdsec;
    let key_given = s.has("api_key_file");
    let url = s.get("lapi_url", cx, read::web_url);
    let api_key = s.get("api_key_file", cx, |v, e| {
        let f = read::secret(v, e)?;
        // The key travels as the X-Api-Key header; refuse what no header can carry now
        // rather than at the first sync.
        http::HeaderValue::from_str(f.expose())
            .map_err(|_| "the API key holds characters not allowed in a header".to_owned())?;
        Ok(f)
    });
    s.set("mode", cx, &mut cs.mode, read::choice);
    for (key, slot) in [
        ("update_interval", &mut cs.update_interval),
        ("resync_interval", &mut cs.resync_interval),
        ("max_staleness", &mut cs.max_staleness),
        ("timeout", &mut cs.timeout),
        ("live_timeout", &mut cs.live_timeout),
    ] {
        s.set(key, cx, slot, read::duration);
    }
    s.set("fail_closed", cx, &mut cs.fail_closed, read::boolean);
    cs.ca_file = s.get("ca_file", cx, read::path);
    cs.cert_file = s.get("cert_file", cx, read::path);
    cs.key_file = s.get("key_file", cx, read::path);
    s.finish(cx);

    if url.is_some() && api_key.is_none() && !key_given {
        cx.err(
            "crowdsec.api_key_file",
            "required when crowdsec.lapi_url is set (a file holding the bouncer key from `cscli bouncers add`)",
        );
    }
    if url.is_none() && api_key.is_some() {
        cx.err(
            "crowdsec.lapi_url",
            "required when crowdsec.api_key_file is set (CrowdSec stays off without it)",
        );
    }
    if cs.cert_file.is_some() != cs.key_file.is_some() {
        cx.err(
            "crowdsec.cert_file",
            "cert_file and key_file go together (client certificate for mTLS)",
        );
    }
    let roots = match cs.ca_file.as_deref().map(lapi_roots).transpose() {
        Ok(r) => r.unwrap_or_default(),
        Err(e) => {
            cx.err("crowdsec.ca_file", e);
            Vec::new()
        }
    };
    let identity = match (&cs.cert_file, &cs.key_file) {
        (Some(cert), Some(key)) => match lapi_identity(cert, key) {
            Ok(id) => Some(id),
            Err(e) => {
                cx.err("crowdsec.cert_file", e);
                None
            }
        },
        _ => None,
    };
    if cs.update_interval < Duration::from_millis(100) {
        cx.err("crowdsec.update_interval", "must be at least 100ms");
    }
    if !cs.resync_interval.is_zero() && cs.resync_interval < cs.update_interval {
        cx.err(
            "crowdsec.resync_interval",
            "must be at least crowdsec.update_interval, or \"0s\" for never",
        );
    }
    if cs.max_staleness < cs.update_interval {
        cx.err(
            "crowdsec.max_staleness",
            "must be at least crowdsec.update_interval",
        );
    }
    if cs.timeout.is_zero() || cs.live_timeout.is_zero() {
        cx.err("crowdsec.timeout", "timeouts must be more than 0s");
    }
    if let (Some(url), Some(api_key)) = (url, api_key) {
        cs.lapi = Some(Lapi {
            url,
            api_key,
            roots,
            identity,
        });
    }
}

/// The roots of a PEM CA bundle for the LAPI client.
fn lapi_roots(ca: &Path) -> Result<Vec<reqwest::Certificate>, String> {
    let pem = std::fs::read(ca).map_err(|e| format!("cannot read {}: {e}", ca.display()))?;
    let certs = reqwest::Certificate::from_pem_bundle(&pem)
        .map_err(|e| format!("bad CA file {}: {e}", ca.display()))?;
    if certs.is_empty() {
        // A DER file parses as an empty PEM bundle: refuse it rather than start with a trust
        // store that can never verify the LAPI.
        return Err(format!(
            "no PEM certificate in {} (convert a DER file with `openssl x509 -inform der`)",
            ca.display()
        ));
    }
    Ok(certs)
}

/// The LAPI client's certificate and key (PEM), as one identity.
fn lapi_identity(cert: &Path, key: &Path) -> Result<reqwest::Identity, String> {
    let read = |p: &Path| std::fs::read(p).map_err(|e| format!("cannot read {}: {e}", p.display()));
    let mut pem = read(cert)?;
    pem.push(b'\n');
    pem.extend(read(key)?);
    reqwest::Identity::from_pem(&pem).map_err(|e| format!("bad client certificate or key: {e}"))
}

/// The `rate_limit.store` keys as read: the Redis they name defaults to the session store's,
/// which is read after them.
struct RateStoreKeys {
    kind: Option<RateStoreKind>,
    url_given: bool,
    redis_url: Option<RedisTarget>,
    password: Option<SecretFile>,
}

impl RateStoreKeys {
    fn resolve(self, c: &mut Config, cx: &mut Cx<'_>) {
        match (self.kind, self.redis_url) {
            (Some(RateStoreKind::Redis), Some(target)) => {
                c.shared_limit = Some(RedisServer {
                    target,
                    password: self.password,
                });
            }
            // A refused URL is a problem already; no second one for it.
            (Some(RateStoreKind::Redis), None) if self.url_given => {}
            (Some(RateStoreKind::Redis), None) => match &c.session.store {
                // The password goes with the URL: the session's only with the session's URL.
                Store::Redis(r) if self.password.is_none() => c.shared_limit = Some(r.clone()),
                Store::Redis(_) => cx.err(
                    "rate_limit.redis_password_file",
                    "needs rate_limit.redis_url (the session store's URL has its own password)",
                ),
                // The session's URL was refused: that problem is listed already.
                Store::Memory if cx.has_error("session.redis_url") => {}
                Store::Memory => cx.err(
                    "rate_limit.redis_url",
                    "required when rate_limit.store = \"redis\" and session.store is not \"redis\"",
                ),
            },
            (None | Some(RateStoreKind::Local), url) => {
                for (key, given) in [
                    ("rate_limit.redis_url", url.is_some()),
                    ("rate_limit.redis_password_file", self.password.is_some()),
                ] {
                    if given {
                        c.ignored.0.push(format!(
                            "{key}: has no effect unless rate_limit.store = \"redis\""
                        ));
                    }
                }
            }
        }
    }
}

fn rate_limit(c: &mut Config, mut s: Section, cx: &mut Cx<'_>) -> RateStoreKeys {
    let kind = s.get("store", cx, read::choice::<RateStoreKind>);
    let url_given = s.has("redis_url");
    let redis_url = s.get("redis_url", cx, read::redis_target);
    let password = s.get("redis_password_file", cx, read::secret);
    let rl = &mut c.rate_limit;
    s.set("per_second", cx, &mut rl.per_second, |v, e| {
        read::ranged(v, e, 0, 10_000_000)
    });
    s.set("burst", cx, &mut rl.burst, |v, e| {
        read::ranged(v, e, 1, 10_000_000)
    });
    s.set("key", cx, &mut rl.key, read::choice);
    s.set("ipv6_prefix", cx, &mut rl.ipv6_prefix, |v, e| {
        read::ranged(v, e, 1, 128)
    });
    s.set("exempt", cx, &mut rl.exempt, read::nets);
    s.finish(cx);
    RateStoreKeys {
        kind,
        url_given,
        redis_url,
        password,
    }
}

/// The `[auth]` keys as read, before the login they describe is assembled with the keys of
/// other sections.
struct AuthKeys {
    provider: Option<Provider>,
    issuer_url: Option<Url>,
    client_id: Option<String>,
    client_secret: Option<SecretFile>,
    /// Keys written whose value was refused: a problem already, not also a missing key.
    secret_given: bool,
    allowed_domains: Vec<crate::domain::DomainName>,
    allowed_emails: Vec<String>,
    redirect_domains: Vec<crate::domain::RedirectDomain>,
    /// Keys set (other than `provider`), to name them when no provider turns login on.
    written: Vec<String>,
}

impl AuthKeys {
    fn read(mut s: Section, cx: &mut Cx<'_>) -> Self {
        let secret_given = s.has("client_secret_file");
        let keys = Self {
            provider: s.get("provider", cx, read::choice),
            issuer_url: s.get("issuer_url", cx, read::web_url),
            client_id: s.get("client_id", cx, read::string),
            client_secret: s.get("client_secret_file", cx, read::secret),
            secret_given,
            allowed_domains: s
                .get("allowed_domains", cx, read::domain_names)
                .unwrap_or_default(),
            allowed_emails: s
                .get("allowed_emails", cx, |v, e| {
                    let list: Vec<String> = read::string_list(v, e)?
                        .iter()
                        .map(|a| a.trim().to_ascii_lowercase())
                        .collect();
                    for addr in &list {
                        if crate::oauth::email::normalize(addr).is_none() {
                            return Err(format!("not a plain email address: {addr:?}"));
                        }
                    }
                    Ok(list)
                })
                .unwrap_or_default(),
            redirect_domains: s
                .get("redirect_domains", cx, read::redirect_domains)
                .unwrap_or_default(),
            written: Vec::new(),
        };
        s.finish(cx);
        // The keys set to something other than their default, to name them when no provider
        // turns login on (an empty list changes nothing either way).
        let mut keys = keys;
        for (key, set) in [
            ("issuer_url", keys.issuer_url.is_some()),
            ("client_id", keys.client_id.is_some()),
            ("client_secret_file", keys.secret_given),
            ("allowed_domains", !keys.allowed_domains.is_empty()),
            ("allowed_emails", !keys.allowed_emails.is_empty()),
            ("redirect_domains", !keys.redirect_domains.is_empty()),
        ] {
            if set {
                keys.written.push(format!("auth.{key}"));
            }
        }
        keys
    }

    /// The login, when `provider` is set and everything it needs is there.
    /// `secret_given`: whether `session.cookie_secret_file` was written, whatever its value.
    fn build(self, c: &mut Config, secret_given: bool, cx: &mut Cx<'_>) -> Option<Auth> {
        let Some(provider) = self.provider else {
            for key in self.written {
                c.ignored.0.push(format!(
                    "{key}: has no effect while auth.provider is unset (login is off)"
                ));
            }
            if matches!(c.session.store, Store::Redis(_)) {
                let used = if c.shared_limit.is_some() {
                    " (rate_limit.store = \"redis\" still uses its Redis)"
                } else {
                    ""
                };
                c.ignored.0.push(format!(
                    "session.store: no session is kept while auth.provider is unset (login is \
                     off){used}"
                ));
            }
            return None;
        };
        let errors_before = cx.count();
        let need = "required when auth.provider is set";
        let public_url = c.server.public_url.clone();
        match &public_url {
            None => cx.err(
                "server.public_url",
                format!("{need} (it builds the OAuth callback URL {{public_url}}/oauth2/callback)"),
            ),
            Some(u)
                if crate::rules::GatePages::new(u.host_str().unwrap_or(""), u.path()).is_none() =>
            {
                cx.err(
                    "server.public_url",
                    "has no usable host name for the login pages",
                )
            }
            Some(_) => {}
        }
        if self.client_id.is_none() {
            cx.err("auth.client_id", need);
        }
        if self.client_secret.is_none() && !self.secret_given {
            cx.err("auth.client_secret_file", need);
        }
        if c.session.cookie_secret.is_none() && !secret_given {
            cx.err(
                "session.cookie_secret_file",
                format!("{need} (generate one with `jacker-gate gen-secret`)"),
            );
        }
        let issuer_url = match (self.issuer_url, provider) {
            (Some(u), _) => Some(u),
            // The effective value, so that `check-config` prints what the gate will use.
            (None, Provider::Google) => Some(Url::parse(GOOGLE_ISSUER_URL).expect("a valid URL")),
            (None, Provider::Oidc) => {
                cx.err("auth.issuer_url", "required when auth.provider = \"oidc\"");
                None
            }
        };
        if self.allowed_domains.is_empty() && self.allowed_emails.is_empty() {
            cx.err(
                "auth.allowed_domains",
                "allowed_domains and allowed_emails are both empty: nobody could sign in",
            );
        }
        if cx.count() != errors_before {
            return None;
        }
        // The effective value, so that `check-config` prints where return URLs may lead: the
        // cookie domains unless the config names others.
        let redirect_domains = if self.redirect_domains.is_empty() {
            c.session
                .cookie_domains
                .iter()
                .map(|d| crate::domain::RedirectDomain {
                    domain: d.clone(),
                    port: None,
                })
                .collect()
        } else {
            self.redirect_domains
        };
        Some(Auth {
            provider,
            issuer_url: issuer_url?,
            client_id: self.client_id?,
            client_secret: self.client_secret?,
            allowed_domains: self.allowed_domains,
            allowed_emails: self.allowed_emails,
            redirect_domains,
            public_url: public_url?,
            cookie_secret: c.session.cookie_secret.clone()?,
        })
    }
}

/// Returns whether `cookie_secret_file` was written, whatever its value.
fn session(c: &mut Config, mut s: Section, cx: &mut Cx<'_>) -> bool {
    let se = &mut c.session;
    let secret_given = s.has("cookie_secret_file");
    let kind = s.get("store", cx, read::choice::<StoreKind>);
    let url_given = s.has("redis_url");
    let redis_url = s.get("redis_url", cx, read::redis_target);
    let password = s.get("redis_password_file", cx, read::secret);
    s.set("cookie_name", cx, &mut se.cookie_name, |v, e| {
        let t = read::string(v, e)?;
        let ok = !t.is_empty()
            && t.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"_-.".contains(&b));
        if ok {
            Ok(t)
        } else {
            Err(format!("not a cookie name (letters, digits, _ - .): {t:?}"))
        }
    });
    s.set(
        "cookie_domains",
        cx,
        &mut se.cookie_domains,
        read::domain_suffixes,
    );
    se.cookie_secret = s.get("cookie_secret_file", cx, |v, e| {
        CookieSecret::try_from(read::secret(v, e)?).map_err(|e| e.to_string())
    });
    s.set("cookie_secure", cx, &mut se.cookie_secure, read::boolean);
    s.set("lifetime", cx, &mut se.lifetime, read::duration);
    s.set("cache_ttl", cx, &mut se.cache_ttl, read::duration);
    if se.lifetime.is_zero() {
        cx.err("session.lifetime", "must be more than 0s");
    }
    s.finish(cx);
    match (kind, redis_url) {
        (Some(StoreKind::Redis), Some(url)) => {
            se.store = Store::Redis(RedisServer {
                target: url,
                password,
            });
        }
        (Some(StoreKind::Redis), None) if !url_given => cx.err(
            "session.redis_url",
            "required when session.store = \"redis\"",
        ),
        (Some(StoreKind::Redis), None) => {}
        (None | Some(StoreKind::Memory), url) => {
            for (key, given) in [
                ("session.redis_url", url.is_some()),
                ("session.redis_password_file", password.is_some()),
            ] {
                if given {
                    c.ignored.0.push(format!(
                        "{key}: has no effect unless session.store = \"redis\""
                    ));
                }
            }
        }
    }
    secret_given
}

fn log(c: &mut Config, mut s: Section, cx: &mut Cx<'_>) {
    s.set("format", cx, &mut c.log.format, read::choice);
    s.set("level", cx, &mut c.log.level, |v, e| {
        let t = read::string(v, e)?;
        // The filter parser panics on some non-ASCII input; a level is ASCII anyway.
        if !t.bytes().all(|b| b.is_ascii_graphic() || b == b' ') {
            return Err(format!("not a log level or filter: {t:?}"));
        }
        tracing_subscriber::EnvFilter::try_new(&t)
            .map_err(|e| format!("not a log level or filter: {e}"))?;
        Ok(t)
    });
    s.finish(cx);
}

fn rule(i: usize, item: Value, auth_on: bool, cx: &mut Cx<'_>) -> Option<Rule> {
    let name = format!("rules[{i}]");
    let Value::Table(table) = item else {
        cx.err(&name, "must be a table");
        return None;
    };
    let mut s = Section::new(name, table);
    let errors_before = cx.count();
    let host = s.get("host", cx, |v, e| {
        HostPattern::parse(&read::string(v, e)?).map_err(|e| e.to_string())
    });
    let path_prefix = s.get("path_prefix", cx, |v, e| {
        PathPrefix::parse(&read::string(v, e)?).map_err(|e| e.to_string())
    });
    let methods = s
        .get("methods", cx, |v, e| {
            let list = read::string_list(v, e)?;
            for m in &list {
                if m.is_empty() || !m.bytes().all(|b| b.is_ascii_alphabetic()) {
                    return Err(format!("not an HTTP method: {m:?}"));
                }
            }
            Ok(list.iter().map(|m| m.to_ascii_uppercase()).collect())
        })
        .unwrap_or_default();
    let policy = s.get("policy", cx, read::choice::<Policy>);
    let key = s.key("policy");
    let had_policy = policy.is_some();
    s.finish(cx);
    if !had_policy && cx.count() == errors_before {
        cx.err(&key, "required: \"public\", \"login\" or \"deny\"");
    }
    if policy == Some(Policy::Login) && !auth_on {
        cx.err(&key, "\"login\" needs an [auth] provider");
    }
    if cx.count() != errors_before {
        return None;
    }
    Some(Rule {
        host,
        path_prefix,
        methods,
        policy: policy?,
    })
}
