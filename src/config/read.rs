//! Value readers: one TOML value (or an environment string standing in for one) to one typed
//! value, with a message that names what was expected. Also the error collector ([`Cx`]) and
//! the per-table reader ([`Section`]) that reports unknown keys.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::IpNet;
use serde::de::DeserializeOwned;
use toml::Value;
use url::Url;

use super::{env, ConfigError, SecretFile};
use crate::client_ip::parse_net;
use crate::domain::{DomainName, DomainSuffix, RedirectDomain};
use crate::duration::parse_human;

/// Collects every problem, naming the environment variable where a key came from one.
pub(super) struct Cx<'a> {
    errors: Vec<ConfigError>,
    env_keys: &'a BTreeSet<String>,
}

impl<'a> Cx<'a> {
    pub(super) fn new(errors: Vec<ConfigError>, env_keys: &'a BTreeSet<String>) -> Self {
        Self { errors, env_keys }
    }

    /// Whether a problem with the dotted `key` was recorded already.
    pub(super) fn has_error(&self, key: &str) -> bool {
        self.errors
            .iter()
            .any(|e| e.key.split(' ').next() == Some(key))
    }

    /// Records a problem with the dotted `key`.
    pub(super) fn err(&mut self, key: &str, message: impl Into<String>) {
        let key = if self.env_keys.contains(key) {
            format!("{key} (from {})", env::variable(key))
        } else {
            key.to_owned()
        };
        self.errors.push(ConfigError {
            key,
            message: message.into(),
        });
    }

    /// How many problems so far, to tell whether a step added any.
    pub(super) fn count(&self) -> usize {
        self.errors.len()
    }

    pub(super) fn into_errors(self) -> Vec<ConfigError> {
        self.errors
    }
}

/// Reads the keys of one table, recording unknown keys and type errors against the dotted name.
pub(super) struct Section {
    name: String,
    table: toml::Table,
}

impl Section {
    /// Takes the table `name` out of `root` (an empty one when absent).
    pub(super) fn take(root: &mut toml::Table, name: &str, cx: &mut Cx<'_>) -> Self {
        let table = match root.remove(name) {
            None => toml::Table::new(),
            Some(Value::Table(t)) => t,
            Some(_) => {
                cx.err(name, "must be a table");
                toml::Table::new()
            }
        };
        Self::new(name.to_owned(), table)
    }

    pub(super) fn new(name: String, table: toml::Table) -> Self {
        Self { name, table }
    }

    /// `section.key`.
    pub(super) fn key(&self, key: &str) -> String {
        format!("{}.{key}", self.name)
    }

    /// Whether `key` was written, whatever its value.
    pub(super) fn has(&self, key: &str) -> bool {
        self.table.contains_key(key)
    }

    /// Removes `key` and converts it; `None` when absent or invalid (the error is recorded).
    pub(super) fn get<T>(
        &mut self,
        key: &str,
        cx: &mut Cx<'_>,
        convert: impl FnOnce(&Value, bool) -> Result<T, String>,
    ) -> Option<T> {
        let value = self.table.remove(key)?;
        let dotted = self.key(key);
        let from_env = cx.env_keys.contains(&dotted);
        match convert(&value, from_env) {
            Ok(v) => Some(v),
            Err(message) => {
                cx.err(&dotted, message);
                None
            }
        }
    }

    /// Like [`Section::get`], keeping `slot` when the key is absent or invalid.
    pub(super) fn set<T>(
        &mut self,
        key: &str,
        cx: &mut Cx<'_>,
        slot: &mut T,
        convert: impl FnOnce(&Value, bool) -> Result<T, String>,
    ) {
        if let Some(v) = self.get(key, cx, convert) {
            *slot = v;
        }
    }

    /// Reports every key not read as unknown.
    pub(super) fn finish(self, cx: &mut Cx<'_>) {
        for key in self.table.keys() {
            cx.err(&format!("{}.{key}", self.name), "unknown key");
        }
    }
}

// Every reader takes the value and whether it came from the environment, where it is a
// string standing in for a TOML value.

pub(super) fn string(v: &Value, _env: bool) -> Result<String, String> {
    match v {
        Value::String(s) => Ok(s.clone()),
        other => Err(format!("expected a string, found {}", other.type_str())),
    }
}

/// One of an enum's names, as its serde spelling: the names are written once, on the type.
pub(super) fn choice<T: DeserializeOwned>(v: &Value, env: bool) -> Result<T, String> {
    let s = string(v, env)?;
    T::deserialize(Value::String(s.clone())).map_err(|e| {
        // serde says "unknown variant `x`, expected `a` or `b`"; keep its list of names.
        let names = e.to_string();
        let expected = names.split_once("expected ").map_or("", |(_, x)| x);
        format!(
            "expected {}, found {s:?}",
            expected.trim().replace('`', "\"")
        )
    })
}

pub(super) fn boolean(v: &Value, env: bool) -> Result<bool, String> {
    match v {
        Value::Boolean(b) => Ok(*b),
        Value::String(s) if env => match s.as_str() {
            "true" => Ok(true),
            "false" => Ok(false),
            _ => Err(format!("expected true or false, found {s:?}")),
        },
        other => Err(format!(
            "expected true or false, found {}",
            other.type_str()
        )),
    }
}

fn integer(v: &Value, env: bool) -> Result<i64, String> {
    match v {
        Value::Integer(i) => Ok(*i),
        Value::String(s) if env => s
            .trim()
            .parse()
            .map_err(|_| format!("expected an integer, found {s:?}")),
        other => Err(format!("expected an integer, found {}", other.type_str())),
    }
}

/// An integer in `min..=max`, as `T`.
pub(super) fn ranged<T: TryFrom<i64>>(
    v: &Value,
    env: bool,
    min: i64,
    max: i64,
) -> Result<T, String> {
    let i = integer(v, env)?;
    if i < min || i > max {
        return Err(format!("must be between {min} and {max}, found {i}"));
    }
    T::try_from(i).map_err(|_| format!("out of range: {i}"))
}

pub(super) fn duration(v: &Value, _env: bool) -> Result<Duration, String> {
    match v {
        Value::String(s) => parse_human(s).map_err(|e| e.to_string()),
        other => Err(format!(
            "expected a duration string such as \"10s\", found {}",
            other.type_str()
        )),
    }
}

/// A list of strings; from the environment, a TOML list (`'["a","b"]'`).
pub(super) fn string_list(v: &Value, env: bool) -> Result<Vec<String>, String> {
    let parsed;
    let v = match v {
        Value::String(s) if env => {
            let t: toml::Table = format!("v = {s}").parse().map_err(|_| {
                format!("expected a TOML list such as '[\"a\",\"b\"]', found {s:?}")
            })?;
            parsed = t.get("v").cloned().unwrap_or(Value::Array(Vec::new()));
            &parsed
        }
        v => v,
    };
    match v {
        Value::Array(items) => items
            .iter()
            .enumerate()
            .map(|(i, item)| match item {
                Value::String(s) => Ok(s.clone()),
                other => Err(format!(
                    "item {i}: expected a string, found {}",
                    other.type_str()
                )),
            })
            .collect(),
        other => Err(format!(
            "expected a list of strings, found {}",
            other.type_str()
        )),
    }
}

/// A list whose every item `parse` accepts; the refused items are named together.
fn list_of<T, E>(
    v: &Value,
    env: bool,
    what: &str,
    parse: impl Fn(&str) -> Result<T, E>,
) -> Result<Vec<T>, String> {
    let mut out = Vec::new();
    let mut bad = Vec::new();
    for s in string_list(v, env)? {
        match parse(&s) {
            Ok(t) => out.push(t),
            Err(_) => bad.push(format!("{s:?}")),
        }
    }
    if bad.is_empty() {
        Ok(out)
    } else {
        Err(format!("{what}: {}", bad.join(", ")))
    }
}

pub(super) fn nets(v: &Value, env: bool) -> Result<Vec<IpNet>, String> {
    list_of(v, env, "not an IP address or CIDR", |s| {
        parse_net(s).ok_or(())
    })
}

pub(super) fn domain_names(v: &Value, env: bool) -> Result<Vec<DomainName>, String> {
    list_of(v, env, "not a domain name", DomainName::parse)
}

pub(super) fn domain_suffixes(v: &Value, env: bool) -> Result<Vec<DomainSuffix>, String> {
    list_of(
        v,
        env,
        "not a domain name (`.example.com` for a domain and its subdomains)",
        DomainSuffix::parse,
    )
}

/// `redirect_domains` entries may name a port (`example.com:8443`); other domain lists may not.
pub(super) fn redirect_domains(v: &Value, env: bool) -> Result<Vec<RedirectDomain>, String> {
    list_of(
        v,
        env,
        "not a domain name with an optional :port (`.example.com` for a domain and its \
         subdomains; a host, not a URL)",
        RedirectDomain::parse,
    )
}

/// An `http` or `https` URL with a host and no user info, query or fragment.
pub(super) fn web_url(v: &Value, env: bool) -> Result<Url, String> {
    let s = string(v, env)?;
    // The value may hold credentials by mistake (user info, or a key in the query): never
    // echo it once it has an `@`, a `?` or a `#`.
    let shown = if s.contains(['@', '?', '#']) {
        "(value hidden)".to_owned()
    } else {
        format!("{s:?}")
    };
    let url = Url::parse(&s).map_err(|e| format!("invalid URL {shown}: {e}"))?;
    if !url.username().is_empty() || url.password().is_some() {
        return Err("must not carry user info (credentials belong in *_file keys)".to_owned());
    }
    if !matches!(url.scheme(), "http" | "https") || url.host().is_none() {
        return Err(format!("must be an http or https URL, found {shown}"));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(format!("must not carry a query or fragment: {shown}"));
    }
    Ok(url)
}

pub(super) fn secret(v: &Value, env: bool) -> Result<SecretFile, String> {
    let s = string(v, env)?;
    SecretFile::read(Path::new(&s)).map_err(|e| e.to_string())
}

/// A path to a file that exists and can be stat'ed; its contents are checked by the caller.
pub(super) fn path(v: &Value, env: bool) -> Result<PathBuf, String> {
    let s = string(v, env)?;
    let p = PathBuf::from(&s);
    std::fs::metadata(&p).map_err(|e| format!("cannot read {s}: {e}"))?;
    Ok(p)
}

/// A Redis, Sentinel or Cluster URL without a password (see [`RedisTarget::parse`]).
pub(super) fn redis_target(v: &Value, env: bool) -> Result<super::RedisTarget, String> {
    super::RedisTarget::parse(&string(v, env)?).map_err(|e| e.to_string())
}
