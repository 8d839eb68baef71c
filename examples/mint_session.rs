//! For the load benchmark: writes a session for `alice@example.com` straight into Redis, as a
//! login would, and prints the signed cookie value — so a load run can hit a `login` route
//! without driving an OpenID provider for every connection.
//!
//! `cargo run --release --example mint_session -- redis://127.0.0.1:6379/0 COOKIE_SECRET_FILE`

use std::time::Duration;

use jacker_gate::clock::{Clock, SystemClock};
use jacker_gate::config::decode_cookie_secret;
use jacker_gate::session::cookie::CookieCodec;
use jacker_gate::session::redis::RedisStore;
use jacker_gate::session::Sessions;

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let mut args = std::env::args().skip(1);
    let (Some(url), Some(secret_file)) = (args.next(), args.next()) else {
        eprintln!("usage: mint_session REDIS_URL COOKIE_SECRET_FILE");
        std::process::exit(64);
    };
    let secret = std::fs::read_to_string(&secret_file).expect("read the cookie secret file");
    let key = decode_cookie_secret(&secret).expect("a valid cookie secret");
    let target = jacker_gate::config::RedisTarget::parse(&url).expect("a Redis URL");
    let store = RedisStore::connect(&target, None, Duration::from_secs(2))
        .await
        .expect("connect to Redis");
    let sessions = Sessions::new(
        store,
        CookieCodec::new(&key),
        Duration::from_secs(5),
        Duration::from_secs(86_400),
    );
    let cookie = sessions
        .create("alice@example.com", SystemClock.now())
        .await
        .expect("store the session");
    println!("{cookie}");
}
