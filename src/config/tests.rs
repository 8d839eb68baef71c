//! Unit tests of config loading: defaults, round trips, environment overrides, and that every
//! problem is reported with its key.

use super::*;

fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn errors(text: &str, vars: &[(&str, &str)]) -> Vec<String> {
    match parse(text, &env(vars)) {
        Ok(c) => panic!("expected errors, got {c:?}"),
        Err(e) => e.0.iter().map(|e| e.to_string()).collect(),
    }
}

fn assert_has(errs: &[String], needle: &str) {
    assert!(
        errs.iter().any(|e| e.contains(needle)),
        "no error containing {needle:?} in {errs:#?}"
    );
}

#[test]
fn empty_is_the_documented_defaults() {
    let c = parse("", &[]).unwrap();
    assert_eq!(c, Config::default());
    assert_eq!(c.server.listen.to_string(), "127.0.0.1:8080");
    assert_eq!(c.rate_limit.per_second, 50);
    assert_eq!(c.rate_limit.burst, 100);
    assert!(c.crowdsec.lapi.is_none());
    assert!(c.auth.is_none());
    assert_eq!(c.session.store, Store::Memory);
}

#[test]
fn printed_config_loads_back_the_same() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("bouncer_key");
    std::fs::write(&key, "s3cr3t-bouncer-key\n").unwrap();
    let text = format!(
        r#"
[server]
listen = "0.0.0.0:9090"
public_url = "https://auth.example.com"
trusted_proxies = ["192.168.71.0/24", "::ffff:10.0.0.0/104"]
max_header_bytes = 16384
header_read_timeout = "5s"
max_connections = 500
worker_threads = 4

[crowdsec]
lapi_url = "http://crowdsec:8080"
api_key_file = "{key}"
mode = "live"
update_interval = "1m30s"
fail_closed = true
max_staleness = "10m"

[rate_limit]
per_second = 0
burst = 7
key = "user"
ipv6_prefix = 56
exempt = ["10.0.0.0/8", "2001:db8::/32"]

[session]
cookie_domains = [".Example.com"]
lifetime = "12h"

[[rules]]
host = "*.example.com"
path_prefix = "/admin/"
methods = ["post", "DELETE"]
policy = "deny"

[[rules]]
policy = "public"

[log]
format = "text"
level = "debug"
"#,
        key = key.display()
    );
    let c = parse(&text, &[]).unwrap();
    assert_eq!(
        c.crowdsec.lapi.as_ref().unwrap().api_key.expose(),
        "s3cr3t-bouncer-key"
    );
    assert_eq!(c.server.trusted_proxies[1].to_string(), "10.0.0.0/8");
    assert_eq!(c.rules[0].methods, ["POST", "DELETE"]);
    let printed = c.to_toml();
    assert!(!printed.contains("s3cr3t"), "secret leaked:\n{printed}");
    assert!(printed.contains(&key.display().to_string()));
    assert!(printed.contains("update_interval = \"1m30s\""), "{printed}");
    let again = parse(&printed, &[]).unwrap();
    assert_eq!(again, c);
    // Defaults print and load back too, with unset optional keys left out.
    let d = Config::default().to_toml();
    assert!(!d.contains("lapi_url"));
    assert_eq!(parse(&d, &[]).unwrap(), Config::default());
    // Debug output never holds the secret either.
    assert!(!format!("{c:?}").contains("s3cr3t"));
}

#[test]
fn every_problem_is_listed_with_its_key() {
    let errs = errors(
        r#"
[server]
listen = "nope"
trusted_proxies = ["10.0.0.0/8", "bogus"]
colour = "blue"

[crowdsec]
lapi_url = "ftp://x"
mode = "batch"
update_interval = "soon"

[rate_limit]
per_second = -1
ipv6_prefix = 200
key = "cookie"

[session]
store = "redis"
cookie_secret_file = "/nonexistent/secret"
cookie_secure = "yes"

[log]
format = "xml"

[[rules]]
host = "https://example.com"
policy = "allow"

[[rules]]
path_prefix = "/x"

[[rules]]
policy = "login"

[extra]
a = 1
"#,
        &[],
    );
    for key in [
        "server.listen",
        "server.trusted_proxies: not an IP address or CIDR: \"bogus\"",
        "server.colour: unknown key",
        "crowdsec.lapi_url",
        "crowdsec.mode",
        "crowdsec.update_interval",
        "rate_limit.per_second",
        "rate_limit.ipv6_prefix",
        "rate_limit.key",
        "session.redis_url: required",
        "session.cookie_secret_file: cannot read secret file /nonexistent/secret",
        "session.cookie_secure",
        "log.format",
        "rules[0].host",
        "rules[0].policy",
        "rules[1].policy: required",
        "rules[2].policy: \"login\" needs an [auth] provider",
        "extra: unknown section",
    ] {
        assert_has(&errs, key);
    }
    assert_eq!(errs.len(), 18, "{errs:#?}");
}

#[test]
fn worker_threads_is_one_by_default_and_bounded() {
    assert_eq!(parse("", &[]).unwrap().server.worker_threads, 1);
    for bad in ["0", "1025", "\"2\""] {
        let errs = errors(&format!("[server]\nworker_threads = {bad}\n"), &[]);
        assert_has(&errs, "server.worker_threads");
    }
    let errs = errors("", &[("JACKER_GATE_SERVER__WORKER_THREADS", "0")]);
    assert_has(&errs, "must be between 1 and 1024");
}

#[test]
fn syntax_errors_are_reported() {
    assert_has(&errors("[server\nlisten=1", &[]), "invalid TOML at line 1");
    // The position, never the line itself: it may hold a credential written by mistake.
    let errs = errors(
        "[session]\nstore = \"redis\"\nredis_url = \"redis://:hunter2@127.0.0.1:6379\n",
        &[],
    );
    assert_has(&errs, "invalid TOML at line 3");
    assert!(!errs.iter().any(|e| e.contains("hunter2")), "{errs:?}");
    // Nor do value errors echo a URL whose query may carry a key.
    let errs = errors(
        "[crowdsec]\nlapi_url = \"http://lapi/?api_key=s3cr3t\"\n",
        &[],
    );
    assert_has(&errs, "crowdsec.lapi_url: must not carry a query");
    assert!(!errs.iter().any(|e| e.contains("s3cr3t")), "{errs:?}");
    for url in [
        "redis://gate@redis:6379/0?password=s3cr3t",
        "rediss://gate@redis:6379/0",
    ] {
        let text = format!("[session]\nstore = \"redis\"\nredis_url = \"{url}\"\n");
        let errs = errors(&text, &[]);
        assert_has(&errs, "session.redis_url");
        assert!(!errs.iter().any(|e| e.contains("s3cr3t")), "{errs:?}");
    }
}

#[test]
fn crowdsec_needs_a_key_file_and_login_needs_its_settings() {
    let errs = errors("[crowdsec]\nlapi_url = \"http://127.0.0.1:8080\"\n", &[]);
    assert_has(&errs, "crowdsec.api_key_file: required");
    let errs = errors("[auth]\nprovider = \"oidc\"\n", &[]);
    for key in [
        "server.public_url: required",
        "auth.client_id: required",
        "auth.client_secret_file: required",
        "session.cookie_secret_file: required",
        "auth.issuer_url: required",
        "auth.allowed_domains: allowed_domains and allowed_emails are both empty",
    ] {
        assert_has(&errs, key);
    }
    let errs = errors("[crowdsec]\nupdate_interval = \"10m\"\n", &[]);
    assert_has(&errs, "crowdsec.max_staleness: must be at least");
}

#[test]
fn environment_overrides_the_file() {
    let c = parse(
        "[rate_limit]\nper_second = 5\n",
        &env(&[
            ("JACKER_GATE_RATE_LIMIT__PER_SECOND", "20"),
            ("JACKER_GATE_RATE_LIMIT__EXEMPT", r#"["10.0.0.0/8","::1"]"#),
            ("JACKER_GATE_SERVER__LISTEN", "0.0.0.0:8080"),
            ("JACKER_GATE_CROWDSEC__FAIL_CLOSED", "true"),
            ("JACKER_GATE_SESSION__LIFETIME", "1d"),
            ("JACKER_GATE_CONFIG", "/ignored/here.toml"),
            ("PATH", "/usr/bin"),
        ]),
    )
    .unwrap();
    assert_eq!(c.rate_limit.per_second, 20);
    assert_eq!(c.rate_limit.exempt.len(), 2);
    assert_eq!(c.server.listen.to_string(), "0.0.0.0:8080");
    assert!(c.crowdsec.fail_closed);
    assert_eq!(c.session.lifetime, Duration::from_secs(86_400));
}

#[test]
fn environment_errors_name_the_variable() {
    let errs = errors(
        "",
        &[
            ("JACKER_GATE_AUTH__CLIENT_SECRET", "hunter2"),
            ("JACKER_GATE_RULES__POLICY", "public"),
            ("JACKER_GATE_NOPE__X", "1"),
            ("JACKER_GATE_LOGLEVEL", "debug"),
            ("JACKER_GATE_RATE_LIMIT__BURST", "many"),
            ("JACKER_GATE_RATE_LIMIT__EXEMPT", "10.0.0.0/8"),
        ],
    );
    assert_has(
        &errs,
        "auth.client_secret (from JACKER_GATE_AUTH__CLIENT_SECRET): unknown key",
    );
    assert_has(
        &errs,
        "JACKER_GATE_RULES__POLICY: [[rules]] come only from the config file",
    );
    assert_has(&errs, "JACKER_GATE_NOPE__X: unknown config key nope.x");
    assert_has(&errs, "JACKER_GATE_LOGLEVEL: not a config key");
    assert_has(
        &errs,
        "rate_limit.burst (from JACKER_GATE_RATE_LIMIT__BURST): expected an integer",
    );
    assert_has(
        &errs,
        "rate_limit.exempt (from JACKER_GATE_RATE_LIMIT__EXEMPT): expected a TOML list",
    );
    assert!(!errs.iter().any(|e| e.contains("hunter2")), "{errs:#?}");
}

#[test]
fn cookie_secrets() {
    use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
    let bytes = [0xfbu8; 32];
    assert_eq!(
        decode_cookie_secret(&STANDARD.encode(bytes)).unwrap(),
        bytes
    );
    assert_eq!(
        decode_cookie_secret(&URL_SAFE_NO_PAD.encode(bytes)).unwrap(),
        bytes
    );
    assert!(decode_cookie_secret(&STANDARD.encode([1u8; 31]))
        .unwrap_err()
        .to_string()
        .contains("31 bytes"));
    assert!(decode_cookie_secret("not base64!!").is_err());

    let dir = tempfile::tempdir().unwrap();
    let short = dir.path().join("short");
    std::fs::write(&short, STANDARD.encode([1u8; 16])).unwrap();
    let empty = dir.path().join("empty");
    std::fs::write(&empty, "\n").unwrap();
    let errs = errors(
        &format!(
            "[session]\ncookie_secret_file = \"{}\"\nredis_password_file = \"{}\"\n",
            short.display(),
            empty.display()
        ),
        &[],
    );
    assert_has(&errs, "session.cookie_secret_file: holds 16 bytes");
    assert_has(&errs, "session.redis_password_file: secret file");
    assert_has(&errs, "is empty");
}

#[test]
fn locate_follows_flag_then_env() {
    let e = env(&[("JACKER_GATE_CONFIG", "/etc/gate.toml")]);
    assert_eq!(locate(None, &e), Origin::File("/etc/gate.toml".into()));
    assert_eq!(
        locate(Some(Path::new("/x.toml")), &e),
        Origin::File("/x.toml".into())
    );
    assert_eq!(locate(None, &[]), Origin::Defaults);
}

#[test]
fn urls_never_carry_or_echo_credentials() {
    for url in [
        "http://:hunter2@127.0.0.1:8080",
        "http://bob:hunter2@127.0.0.1:8080",
    ] {
        let errs = errors(&format!("[crowdsec]\nlapi_url = \"{url}\"\n"), &[]);
        assert_has(&errs, "crowdsec.lapi_url: must not carry user info");
        assert!(!errs.iter().any(|e| e.contains("hunter2")), "{errs:#?}");
    }
}

#[test]
fn warnings_for_likely_mistakes() {
    let c = parse("[server]\nlisten = \"0.0.0.0:8080\"\n", &[]).unwrap();
    assert!(c
        .warnings()
        .iter()
        .any(|w| w.contains("only loopback is trusted")));
    let c = parse(
        "[server]\nlisten = \"0.0.0.0:8080\"\ntrusted_proxies = [\"192.168.71.0/24\"]\n",
        &[],
    )
    .unwrap();
    assert!(c.warnings().is_empty(), "{:?}", c.warnings());
    let c = parse("[server]\ntrusted_proxies = [\"0.0.0.0/0\"]\n", &[]).unwrap();
    assert!(c.warnings().iter().any(|w| w.contains("/0")));
    assert!(Config::default().warnings().is_empty());
}

#[test]
fn fuzzer_findings_round_trip() {
    // Inputs the config fuzz target found: each loads, and prints back as itself.
    for text in [
        "[auth]\nallowed_emails = [\" Alice@Example.com \"]\n",
        "[server]\ntrusted_proxies = [\"::ffff:10.5.0.0/104\"]\n",
        "[[rules]]\npath_prefix = \"/a%20b\"\npolicy = \"deny\"\n",
        "[[rules]]\npath_prefix = \"/%2561\"\npolicy = \"public\"\n",
    ] {
        let c = parse(text, &[]).unwrap_or_else(|e| panic!("{text}: {e}"));
        assert_eq!(parse(&c.to_toml(), &[]).unwrap(), c, "{text}");
    }
    // An empty local part after trimming is not an address.
    assert_has(
        &errors("[auth]\nallowed_emails = [\" @example.com\"]\n", &[]),
        "auth.allowed_emails: not a plain email address",
    );
    // Non-ASCII log filters are refused instead of reaching a parser that panics on them.
    assert_has(
        &errors("[log]\nlevel = \"info, \u{e9}=debug\"\n", &[]),
        "log.level: not a log level or filter",
    );
}

#[test]
fn domain_lists_and_ports() {
    let c = parse(
        "[auth]\nredirect_domains = [\".Example.com\", \"other.org:8443\"]\n",
        &[],
    )
    .unwrap();
    // Without a provider the key changes nothing, and the gate says so.
    assert!(c.auth.is_none());
    assert!(c
        .warnings()
        .iter()
        .any(|w| w.starts_with("auth.redirect_domains: has no effect")));
    let domains = read::redirect_domains(
        &toml::Value::Array(vec![".Example.com".into(), "other.org:8443".into()]),
        false,
    )
    .unwrap();
    let shown: Vec<String> = domains.iter().map(|d| d.to_string()).collect();
    assert_eq!(shown, [".example.com", "other.org:8443"]);
    for bad in [
        "example.com:abc",
        "example.com:0",
        "example.com:99999",
        "example.com:",
    ] {
        let errs = errors(&format!("[auth]\nredirect_domains = [\"{bad}\"]\n"), &[]);
        assert_has(&errs, "auth.redirect_domains: not a domain name");
    }
    // Cookie domains and allowed domains take no port at all.
    assert_has(
        &errors("[session]\ncookie_domains = [\".example.com:443\"]\n", &[]),
        "session.cookie_domains: not a domain name",
    );
}

/// `provider = "google"` without `issuer_url` uses Google's issuer, and `check-config` prints it.
#[test]
fn google_issuer_is_the_effective_default() {
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("client_secret");
    std::fs::write(&secret, "GOCSPX-test").unwrap();
    let cookie = dir.path().join("cookie_secret");
    std::fs::write(&cookie, "Zm9yLXRlc3RzLW9ubHktMzItYnl0ZXMtb2Ytc2VjcmV0IQ==").unwrap();
    let text = format!(
        "[server]\npublic_url = \"https://auth.example.com\"\n[auth]\nprovider = \"google\"\n\
         client_id = \"id\"\nclient_secret_file = {secret:?}\nallowed_domains = [\"example.com\"]\n\
         [session]\ncookie_secret_file = {cookie:?}\n"
    );
    let c = parse(&text, &[]).unwrap();
    let issuer = &c.auth.as_ref().expect("login on").issuer_url;
    assert_eq!(issuer.as_str().trim_end_matches('/'), GOOGLE_ISSUER_URL);
    let printed = c.to_toml();
    assert!(
        printed.contains("issuer_url = \"https://accounts.google.com/\""),
        "{printed}"
    );
    assert_eq!(parse(&printed, &[]).unwrap(), c);
}

/// What `run` would refuse, `check-config` refuses: the LAPI's CA and client certificate are
/// parsed at load, and so is the bouncer key as a header value.
#[test]
fn lapi_material_is_parsed_at_load() {
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, bytes: &[u8]| {
        let p = dir.path().join(name);
        std::fs::write(&p, bytes).unwrap();
        p
    };
    let key = write("key", b"bouncer-key\n");
    let bad_key = write("bad_key", b"bouncer\x01key\n");
    // A DER certificate starts with a SEQUENCE tag; it is no PEM bundle.
    let der = write("ca.der", &[0x30, 0x82, 0x01, 0x0a, 0x02, 0x01, 0x01]);
    let garbage = write("cert.pem", b"-----BEGIN CERTIFICATE-----\nnope\n");
    let config = |key: &std::path::Path, extra: &str| {
        format!("[crowdsec]\nlapi_url = \"https://lapi:8080\"\napi_key_file = {key:?}\n{extra}")
    };
    assert_has(
        &errors(&config(&key, &format!("ca_file = {der:?}\n")), &[]),
        "crowdsec.ca_file: no PEM certificate in",
    );
    assert_has(
        &errors(
            &config(
                &key,
                &format!("cert_file = {garbage:?}\nkey_file = {key:?}\n"),
            ),
            &[],
        ),
        "crowdsec.cert_file: bad client certificate or key",
    );
    assert_has(
        &errors(&config(&bad_key, ""), &[]),
        "crowdsec.api_key_file: the API key holds characters not allowed in a header",
    );
    let c = parse(&config(&key, ""), &[]).unwrap();
    let lapi = c.crowdsec.lapi.as_ref().expect("on");
    assert!(lapi.roots.is_empty() && lapi.identity.is_none());
}

/// Keys that change nothing are warned about, not silently kept or dropped.
#[test]
fn keys_without_effect_are_warned_about() {
    let c = parse(
        "[session]\nredis_url = \"redis://gate@redis:6379/0\"\n[auth]\nclient_id = \"x\"\n",
        &[],
    )
    .unwrap();
    let w = c.warnings();
    assert!(
        w.iter()
            .any(|w| w.starts_with("session.redis_url: has no effect")),
        "{w:?}"
    );
    assert!(
        w.iter()
            .any(|w| w.starts_with("auth.client_id: has no effect")),
        "{w:?}"
    );
    // The effective config leaves them out, and loads back as the same config.
    let printed = c.to_toml();
    assert!(
        !printed.contains("redis_url") && !printed.contains("client_id"),
        "{printed}"
    );
    assert_eq!(parse(&printed, &[]).unwrap(), c);
    // A Redis store with a URL that redis-rs cannot use is refused at load.
    assert_has(
        &errors(
            "[session]\nstore = \"redis\"\nredis_url = \"redis://[::1\"\n",
            &[],
        ),
        "session.redis_url: invalid URL",
    );
}

#[test]
fn redis_sentinel_and_cluster_urls() {
    let load = |url: &str| format!("[session]\nstore = \"redis\"\nredis_url = \"{url}\"\n");
    // Written as typed, printed in full (default ports, lower case); both load the same.
    for (url, printed) in [
        (
            "redis+sentinel://u@s1:26379,S2,[::1]:7/m/3",
            "u@s1:26379,s2:26379,[::1]:7/m/3",
        ),
        ("redis+sentinel://10.0.0.1/main/", "10.0.0.1:26379/main/0"),
        ("redis+cluster://gate@a:7000,b", "gate@a:7000,b:6379"),
    ] {
        let c = parse(&load(url), &[]).unwrap_or_else(|e| panic!("{url}: {e:?}"));
        let Store::Redis(r) = &c.session.store else {
            panic!("{url}")
        };
        assert!(r.target.to_string().ends_with(&format!("://{printed}")));
        assert_eq!(parse(&c.to_toml(), &[]).unwrap(), c, "{url}");
        if let RedisTarget::Sentinel {
            sentinels,
            service,
            db,
            ..
        } = &r.target
        {
            let last = sentinels.last().map(|h| (h.host.as_str(), h.port));
            let want = match url.contains("u@") {
                true => (3, "m", 3, Some(("::1", 7))),
                false => (1, "main", 0, Some(("10.0.0.1", 26379))),
            };
            assert_eq!((sentinels.len(), service.as_str(), *db, last), want);
        }
    }
    // Every problem is listed under the one key; a password is never echoed.
    for (url, problems) in [
        (
            "redis://gate:hunter2@redis:6379/0",
            "must not hold a password",
        ),
        (
            "redis+sentinel://gate:hunter2@s1/main",
            "must not hold a password",
        ),
        (
            "redis+sentinel://s1:0,s2:x,,[::1/",
            "\"0\"|\"x\"|\"\" is not|\"[::1\" is|service name",
        ),
        ("redis+sentinel://s1/main/zero", "database \"zero\""),
        ("redis+sentinel://s1/main/0/1", "more than service_name/db"),
        ("redis+sentinel://s1/main?password=hunter2", "no query"),
        (
            "redis+cluster://a b:1,c/0",
            "\"a b:1\" is not|takes no path",
        ),
        ("redis+cluster://@a", "user name"),
        ("http://a", "redis+cluster://"),
    ] {
        let errs = errors(&load(url), &[]);
        assert_eq!(errs.len(), 1, "{url}: {errs:#?}");
        problems.split('|').for_each(|p| assert_has(&errs, p));
        assert!(!errs.iter().any(|e| e.contains("hunter2")), "{errs:#?}");
    }
}
