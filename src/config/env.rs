//! The environment overlay: `JACKER_GATE_<SECTION>__<KEY>` variables merged into the file's
//! table before anything is validated, so that the environment beats the file and both go
//! through the same readers.

use std::collections::BTreeSet;

use toml::Value;

use super::{ConfigError, CONFIG_ENV};

/// The prefix of every config variable.
pub(super) const PREFIX: &str = "JACKER_GATE_";

/// The sections a variable may name; `[[rules]]` come only from the file.
const SECTIONS: [&str; 6] = ["server", "crowdsec", "rate_limit", "auth", "session", "log"];

/// Merges the variables of `env` into `table` as strings (the typed readers convert them) and
/// returns the dotted keys that came from the environment. A variable that names no key is an
/// error; other variables are ignored.
pub(super) fn apply(
    table: &mut toml::Table,
    env: &[(String, String)],
    errors: &mut Vec<ConfigError>,
) -> BTreeSet<String> {
    let mut keys = BTreeSet::new();
    let mut refuse = |name: &str, message: String| {
        errors.push(ConfigError {
            key: name.to_owned(),
            message,
        })
    };
    for (name, value) in env {
        let Some(rest) = name.strip_prefix(PREFIX) else {
            continue;
        };
        if name == CONFIG_ENV {
            continue;
        }
        let Some((section, key)) = rest.split_once("__") else {
            refuse(
                name,
                "not a config key: expected JACKER_GATE_<SECTION>__<KEY>".into(),
            );
            continue;
        };
        let (section, key) = (section.to_ascii_lowercase(), key.to_ascii_lowercase());
        if section == "rules" {
            refuse(name, "[[rules]] come only from the config file".into());
            continue;
        }
        if !SECTIONS.contains(&section.as_str()) || key.is_empty() || key.contains("__") {
            refuse(name, format!("unknown config key {section}.{key}"));
            continue;
        }
        let entry = table
            .entry(section.clone())
            .or_insert_with(|| Value::Table(toml::Table::new()));
        match entry {
            Value::Table(t) => {
                t.insert(key.clone(), Value::String(value.clone()));
                keys.insert(format!("{section}.{key}"));
            }
            _ => refuse(&section, "must be a table".into()),
        }
    }
    keys
}

/// The variable that sets the dotted `key` (`session.redis_url` →
/// `JACKER_GATE_SESSION__REDIS_URL`).
pub(super) fn variable(key: &str) -> String {
    let (s, k) = key.split_once('.').unwrap_or((key, ""));
    format!(
        "{PREFIX}{}__{}",
        s.to_ascii_uppercase(),
        k.to_ascii_uppercase()
    )
}
