//! Unit tests of `rate_limit.store`: the shared limit's Redis, its default (the session
//! store's), the problems reported with their key, and the printed config loading back.

use super::*;

fn problems(text: &str) -> Vec<String> {
    match parse(text, &[]) {
        Ok(c) => panic!("expected errors, got {c:?}"),
        Err(e) => e.0.iter().map(|e| e.to_string()).collect(),
    }
}

#[test]
fn local_by_default_and_redis_with_its_own_url() {
    let c = parse("", &[]).unwrap();
    assert_eq!(c.shared_limit, None);
    assert!(c.to_toml().contains("store = \"local\""), "{}", c.to_toml());
    let c = parse(
        "[rate_limit]\nstore = \"redis\"\nredis_url = \"redis://gate@10.0.0.5:6380/2\"\n",
        &[],
    )
    .unwrap();
    let shared = c.shared_limit.clone().expect("shared limit on");
    assert_eq!(
        shared.target,
        RedisTarget::parse("redis://gate@10.0.0.5:6380/2").unwrap()
    );
    assert_eq!(parse(&c.to_toml(), &[]).unwrap(), c);
}

#[test]
fn the_session_stores_redis_is_the_default() {
    let dir = tempfile::tempdir().unwrap();
    let pw = dir.path().join("redis_password");
    std::fs::write(&pw, "s3cr3t\n").unwrap();
    let text = format!(
        "[rate_limit]\nstore = \"redis\"\n[session]\nstore = \"redis\"\n\
         redis_url = \"redis+sentinel://gate@s1:26379,s2/main/0\"\nredis_password_file = \"{}\"\n",
        pw.display()
    );
    let c = parse(&text, &[]).unwrap();
    let Store::Redis(session) = &c.session.store else {
        panic!("session store is Redis")
    };
    assert_eq!(c.shared_limit.as_ref(), Some(session));
    let printed = c.to_toml();
    assert!(!printed.contains("s3cr3t"), "{printed}");
    assert_eq!(parse(&printed, &[]).unwrap(), c, "{printed}");
}

#[test]
fn problems_are_named_by_key() {
    let errs = problems("[rate_limit]\nstore = \"redis\"\n");
    assert!(
        errs.iter()
            .any(|e| e.starts_with("rate_limit.redis_url: required")),
        "{errs:?}"
    );
    let errs = problems("[rate_limit]\nstore = \"shared\"\n");
    assert!(
        errs.iter().any(|e| e.starts_with("rate_limit.store")),
        "{errs:?}"
    );
    // Parsed at load like the session URL: check-config refuses what run would.
    let errs = problems("[rate_limit]\nstore = \"redis\"\nredis_url = \"redis://[::1\"\n");
    assert!(
        errs.iter().any(|e| e.starts_with("rate_limit.redis_url:")),
        "{errs:?}"
    );
    assert_eq!(
        errs.len(),
        1,
        "one problem, not also a missing URL: {errs:?}"
    );
    let errs = problems(
        "[rate_limit]\nstore = \"redis\"\nredis_password_file = \"/nonexistent/pw\"\n\
         redis_url = \"redis://r\"\n",
    );
    assert!(
        errs.iter()
            .any(|e| e.starts_with("rate_limit.redis_password_file")),
        "{errs:?}"
    );
}

#[test]
fn redis_keys_without_redis_store_are_warned_about() {
    let c = parse("[rate_limit]\nredis_url = \"redis://r:6379\"\n", &[]).unwrap();
    assert_eq!(c.shared_limit, None);
    assert!(
        c.warnings()
            .iter()
            .any(|w| w.starts_with("rate_limit.redis_url: has no effect")),
        "{:?}",
        c.warnings()
    );
}

#[test]
fn a_refused_session_url_is_one_problem_not_also_a_missing_rate_limit_url() {
    let errs = problems(
        "[rate_limit]\nstore = \"redis\"\n[session]\nstore = \"redis\"\n\
         redis_url = \"redis+sentinel://s1:26379\"\n",
    );
    assert!(
        errs.iter().any(|e| e.starts_with("session.redis_url:")),
        "{errs:?}"
    );
    assert!(
        !errs.iter().any(|e| e.starts_with("rate_limit.redis_url")),
        "{errs:?}"
    );
    let errs =
        problems("[rate_limit]\nstore = \"redis\"\nredis_url = \"redis://gate:pw@r:6379\"\n");
    assert!(
        errs.iter()
            .any(|e| e.starts_with("rate_limit.redis_url:")
                && e.contains("redis_password_file next to")),
        "{errs:?}"
    );
}

#[test]
fn redis_sessions_without_login_are_warned_about() {
    let c = parse(
        "[session]\nstore = \"redis\"\nredis_url = \"redis://r:6379\"\n",
        &[],
    )
    .unwrap();
    assert!(
        c.warnings()
            .iter()
            .any(|w| w.starts_with("session.store: no session is kept")),
        "{:?}",
        c.warnings()
    );
    let c = parse(
        "[rate_limit]\nstore = \"redis\"\n[session]\nstore = \"redis\"\nredis_url = \"redis://r:6379\"\n",
        &[],
    )
    .unwrap();
    assert!(
        c.warnings()
            .iter()
            .any(|w| w.contains("rate_limit.store = \"redis\" still uses")),
        "{:?}",
        c.warnings()
    );
}

#[test]
fn a_shared_rate_above_ten_thousand_a_second_says_what_it_becomes() {
    let c = parse(
        "[rate_limit]\nper_second = 150000\nburst = 300000\nstore = \"redis\"\nredis_url = \"redis://r\"\n",
        &[],
    )
    .unwrap();
    assert!(
        c.warnings()
            .iter()
            .any(|w| w.contains("150000/s is enforced as 142857/s")),
        "{:?}",
        c.warnings()
    );
    let warned = |per_second: u32| {
        let c = parse(
            &format!(
                "[rate_limit]\nper_second = {per_second}\nstore = \"redis\"\nredis_url = \"redis://r\"\n"
            ),
            &[],
        )
        .unwrap();
        c.warnings()
            .into_iter()
            .find(|w| w.starts_with("rate_limit.per_second"))
    };
    for exact in [10_000, 12_500, 1_000_000] {
        assert_eq!(warned(exact), None, "{exact}/s divides 1,000,000");
    }
    let warning = warned(2_000_000).expect("a warning");
    assert!(
        warning.contains("2000000/s is enforced as 1000000/s"),
        "{warning}"
    );
}
