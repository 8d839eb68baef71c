//! The effective config as TOML, for `check-config`: every key with its value (defaults
//! included), durations as human strings, enums by their serde names, secret files by path,
//! unset optional keys left out. [`super::parse`] reads it back as the same config.

use std::path::Path;
use std::time::Duration;

use serde::Serialize;
use toml::{Table, Value};

use super::{Config, RateStoreKind, Store, StoreKind};
use crate::duration::format_human;

/// Builds one table; each method inserts one key.
#[derive(Default)]
struct T(Table);

impl T {
    fn s(mut self, key: &str, v: impl Into<String>) -> Self {
        self.0.insert(key.into(), Value::String(v.into()));
        self
    }
    fn i(mut self, key: &str, v: impl TryInto<i64>) -> Self {
        let v = v.try_into().unwrap_or(i64::MAX);
        self.0.insert(key.into(), Value::Integer(v));
        self
    }
    fn b(mut self, key: &str, v: bool) -> Self {
        self.0.insert(key.into(), Value::Boolean(v));
        self
    }
    fn dur(self, key: &str, d: Duration) -> Self {
        self.s(key, format_human(d))
    }
    fn list<I: ToString>(mut self, key: &str, items: &[I]) -> Self {
        let items = items.iter().map(|i| Value::String(i.to_string())).collect();
        self.0.insert(key.into(), Value::Array(items));
        self
    }
    /// An enum by its serde name.
    fn name(mut self, key: &str, v: impl Serialize) -> Self {
        let v = Value::try_from(v).expect("a unit enum serialises as a string");
        self.0.insert(key.into(), v);
        self
    }
    fn opt(self, key: &str, v: Option<impl ToString>) -> Self {
        match v {
            Some(v) => self.s(key, v.to_string()),
            None => self,
        }
    }
    fn path(self, key: &str, p: Option<&Path>) -> Self {
        self.opt(key, p.map(|p| p.display()))
    }
}

impl Config {
    /// The effective config as TOML that [`super::parse`] reads back as the same config.
    pub fn to_toml(&self) -> String {
        let sv = &self.server;
        let tls = sv.tls.as_ref();
        let server = T::default()
            .s("listen", sv.listen.to_string())
            .opt("public_url", sv.public_url.as_ref())
            .list("trusted_proxies", &sv.trusted_proxies)
            .i("max_header_bytes", sv.max_header_bytes)
            .dur("header_read_timeout", sv.header_read_timeout)
            .i("max_connections", sv.max_connections)
            .i("worker_threads", sv.worker_threads)
            .path("tls_cert_file", tls.map(|t| t.cert.as_path()))
            .path("tls_key_file", tls.map(|t| t.key.as_path()))
            .path(
                "tls_client_ca_file",
                tls.and_then(|t| t.client_ca.as_deref()),
            );

        let cs = &self.crowdsec;
        let lapi = cs.lapi.as_ref();
        let crowdsec = T::default()
            .opt("lapi_url", lapi.map(|l| &l.url))
            .path("api_key_file", lapi.map(|l| l.api_key.path.as_path()))
            .name("mode", cs.mode)
            .dur("update_interval", cs.update_interval)
            .dur("resync_interval", cs.resync_interval)
            .b("fail_closed", cs.fail_closed)
            .dur("max_staleness", cs.max_staleness)
            .dur("timeout", cs.timeout)
            .dur("live_timeout", cs.live_timeout)
            .path("ca_file", cs.ca_file.as_deref())
            .path("cert_file", cs.cert_file.as_deref())
            .path("key_file", cs.key_file.as_deref());

        let rl = &self.rate_limit;
        let rate_limit = T::default()
            .i("per_second", rl.per_second)
            .i("burst", rl.burst)
            .name("key", rl.key)
            .i("ipv6_prefix", rl.ipv6_prefix)
            .list("exempt", &rl.exempt)
            .name(
                "store",
                if self.shared_limit.is_some() {
                    RateStoreKind::Redis
                } else {
                    RateStoreKind::Local
                },
            )
            .opt("redis_url", self.shared_limit.as_ref().map(|r| &r.target))
            .path(
                "redis_password_file",
                self.shared_limit
                    .as_ref()
                    .and_then(|r| r.password.as_ref())
                    .map(|f| f.path.as_path()),
            );

        let auth = match &self.auth {
            None => T::default(),
            Some(a) => T::default()
                .name("provider", a.provider)
                .s("issuer_url", a.issuer_url.as_str())
                .s("client_id", a.client_id.as_str())
                .path("client_secret_file", Some(&a.client_secret.path))
                .list("allowed_domains", &a.allowed_domains)
                .list("allowed_emails", &a.allowed_emails)
                .list("redirect_domains", &a.redirect_domains),
        };

        let se = &self.session;
        let (kind, redis) = match &se.store {
            Store::Memory => (StoreKind::Memory, None),
            Store::Redis(r) => (StoreKind::Redis, Some(r)),
        };
        let session = T::default()
            .name("store", kind)
            .opt("redis_url", redis.map(|r| &r.target))
            .path(
                "redis_password_file",
                redis
                    .and_then(|r| r.password.as_ref())
                    .map(|f| f.path.as_path()),
            )
            .s("cookie_name", se.cookie_name.as_str())
            .list("cookie_domains", &se.cookie_domains)
            .path(
                "cookie_secret_file",
                se.cookie_secret.as_ref().map(|s| s.file.path.as_path()),
            )
            .b("cookie_secure", se.cookie_secure)
            .dur("lifetime", se.lifetime)
            .dur("cache_ttl", se.cache_ttl);

        let log = T::default()
            .name("format", self.log.format)
            .s("level", self.log.level.as_str());

        let mut root = Table::new();
        for (name, t) in [
            ("server", server),
            ("crowdsec", crowdsec),
            ("rate_limit", rate_limit),
            ("auth", auth),
            ("session", session),
            ("log", log),
        ] {
            root.insert(name.into(), Value::Table(t.0));
        }
        let rules: Vec<Value> = self
            .rules
            .iter()
            .map(|r| {
                let t = T::default()
                    .opt("host", r.host.as_ref())
                    .opt("path_prefix", r.path_prefix.as_ref().map(|p| p.raw()))
                    .list("methods", &r.methods)
                    .name("policy", r.policy);
                Value::Table(t.0)
            })
            .collect();
        if !rules.is_empty() {
            root.insert("rules".into(), Value::Array(rules));
        }
        toml::to_string_pretty(&root).expect("a toml::Table always serialises")
    }
}
