//! Backups (compose/backup.yml, compose/config/backup/backup.sh): the script the backup container
//! runs, run here against a real PostgreSQL and a real Redis (loaded with the stack's redis.conf and
//! the ACL built from `secrets.sh`'s secrets), holding rows and sessions the gate itself wrote at
//! a login through the test OpenID provider. Then the data is wiped and restored, and the gate
//! still accepts the cookie it issued before the backup. Also: a corrupted backup fails `verify`
//! and is never restored; the retention and the healthcheck; the resolved Compose project.

use std::collections::BTreeMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use tempfile::TempDir;

use super::support::gate::Gate;
use super::support::login::{log_in, LoginGate, Store, INSTALL as LOGIN_INSTALL};
use super::support::oidc::{OidcProvider, ALICE};
use super::support::peer::{retry_on_taken_port, Peer, PortTaken};
use super::support::reserve_port;
use super::support::web::Browser;
use super::{compose_bin, compose_dir, read, run, run_secrets_script, service, text, GATE};

/// Where the PostgreSQL server and client come from when they are missing.
const PG_INSTALL: &str =
    "bash compose/install-test-tools.sh (Debian's postgresql and postgresql-client)";

fn script() -> PathBuf {
    compose_dir().join("config/backup/backup.sh")
}

/// A PostgreSQL program: on PATH, or in Debian's versioned directory (the server's programs are
/// not on PATH there).
fn pg_tool(name: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let mut dirs: Vec<PathBuf> = std::env::split_paths(&path).collect();
    if let Ok(versions) = std::fs::read_dir("/usr/lib/postgresql") {
        let mut versions: Vec<PathBuf> = versions.flatten().map(|e| e.path().join("bin")).collect();
        versions.sort();
        dirs.extend(versions.into_iter().rev());
    }
    dirs.into_iter()
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("`{name}` (PostgreSQL) is not installed: run {PG_INSTALL}"))
}

fn running_as_root() -> bool {
    super::running_as_root()
}

/// The UID and GID PostgreSQL runs as when the tests run as root (initdb refuses root).
fn pg_owner() -> (u32, u32) {
    let out = Command::new("id").args(["-u", "postgres"]).output();
    match out {
        Ok(o) if o.status.success() => {
            let uid = String::from_utf8_lossy(&o.stdout).trim().parse().unwrap();
            let gid = String::from_utf8_lossy(
                &Command::new("id")
                    .args(["-g", "postgres"])
                    .output()
                    .unwrap()
                    .stdout,
            )
            .trim()
            .parse()
            .unwrap();
            (uid, gid)
        }
        _ => (65534, 65534),
    }
}

/// `program` as PostgreSQL's owner: itself when not root, else through setpriv.
fn as_pg_owner(program: &Path) -> Command {
    if !running_as_root() {
        return Command::new(program);
    }
    let (uid, gid) = pg_owner();
    let mut cmd = Command::new("setpriv");
    cmd.arg(format!("--reuid={uid}"))
        .arg(format!("--regid={gid}"))
        .arg("--clear-groups")
        .arg("--")
        .arg(program);
    cmd
}

fn chown(path: &Path, uid: u32, gid: u32) {
    std::os::unix::fs::chown(path, Some(uid), Some(gid))
        .unwrap_or_else(|e| panic!("chown {}: {e}", path.display()));
}

fn write_private(path: &Path, contents: &str) {
    std::fs::write(path, contents).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

/// A PostgreSQL server on 127.0.0.1 whose superuser `jacker` signs in with a password (SCRAM), as
/// the stack's does.
struct Postgres {
    peer: Peer,
    dir: TempDir,
    port: u16,
}

impl Postgres {
    fn start() -> Postgres {
        let dir = tempfile::Builder::new()
            .prefix("jacker-pg-")
            .tempdir()
            .unwrap();
        let password = dir.path().join("superuser_password");
        write_private(&password, "pg-test:password\\with-escapes");
        let data = dir.path().join("data");
        if running_as_root() {
            let (uid, gid) = pg_owner();
            chown(dir.path(), uid, gid);
            chown(&password, uid, gid);
        }
        let out = run(as_pg_owner(&pg_tool("initdb"))
            .arg("-D")
            .arg(&data)
            .args(["-U", "jacker", "--auth=scram-sha-256", "--no-sync"])
            .arg(format!("--pwfile={}", password.display()))
            .stdin(Stdio::null()));
        assert!(out.status.success(), "initdb: {}", text(&out));
        // A client's PGPASSFILE for the tests' own queries.
        write_private(
            &dir.path().join("pgpass"),
            "*:*:*:jacker:pg-test\\:password\\\\with-escapes\n",
        );
        let mut pg = Postgres {
            peer: Peer::new("postgres"),
            dir,
            port: 0,
        };
        retry_on_taken_port("postgres", || {
            pg.port = reserve_port();
            pg.spawn()
        });
        pg
    }

    fn spawn(&mut self) -> Result<(), PortTaken> {
        let mut cmd = as_pg_owner(&pg_tool("postgres"));
        cmd.arg("-D")
            .arg(self.dir.path().join("data"))
            .args(["-p", &self.port.to_string()])
            .args(["-c", "listen_addresses=127.0.0.1"])
            .arg("-c")
            .arg(format!(
                "unix_socket_directories={}",
                self.dir.path().display()
            ))
            .args(["-c", "fsync=off"]);
        self.peer.spawn(cmd);
        let port = self.port;
        let isready = pg_tool("pg_isready");
        self.peer.wait_ready(Duration::from_secs(30), |_| {
            let out = Command::new(&isready)
                .args(["-h", "127.0.0.1", "-p", &port.to_string()])
                .output()
                .map_err(|e| e.to_string())?;
            if out.status.success() {
                Ok(())
            } else {
                Err(text(&out))
            }
        })
    }

    fn password_file(&self) -> PathBuf {
        self.dir.path().join("superuser_password")
    }

    /// `psql -d db` as the superuser, `sql` on standard input; the unaligned output.
    fn psql(&self, db: &str, sql: &str) -> String {
        use std::io::Write;
        let mut child = Command::new(pg_tool("psql"))
            .args(["-X", "-q", "-A", "-t", "-w", "-v", "ON_ERROR_STOP=1"])
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-U",
                "jacker",
                "-d",
                db,
            ])
            .env("PGPASSFILE", self.dir.path().join("pgpass"))
            .env("PGOPTIONS", "-c client_min_messages=warning")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("psql: {e} (run {PG_INSTALL})"));
        child
            .stdin
            .take()
            .unwrap()
            .write_all(sql.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "psql {db}: {sql}\n{}", text(&out));
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }
}

/// A Redis started as the stack starts it: `config/redis/start.sh` builds the ACL from the
/// secrets, then redis-server runs with the stack's redis.conf (appendonly on), on loopback.
struct StackRedis {
    peer: Peer,
    dir: TempDir,
    port: u16,
    secrets: PathBuf,
}

impl StackRedis {
    fn start(secrets: &Path) -> StackRedis {
        let mut redis = StackRedis {
            peer: Peer::new("redis-server"),
            dir: tempfile::Builder::new()
                .prefix("jacker-redis-")
                .tempdir()
                .unwrap(),
            port: 0,
            secrets: secrets.to_owned(),
        };
        std::fs::create_dir(redis.data()).unwrap();
        // The stack's redis.conf but for `dir /data`, which redis-server enters as it reads the
        // file, before the command line's `--dir` would replace it.
        let conf: String = read(&compose_dir().join("config/redis/redis.conf"))
            .lines()
            .filter(|l| !l.starts_with("dir "))
            .map(|l| format!("{l}\n"))
            .collect();
        std::fs::write(redis.dir.path().join("redis.conf"), conf).unwrap();
        retry_on_taken_port("redis-server", || {
            redis.port = reserve_port();
            redis.spawn()
        });
        redis
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn spawn(&mut self) -> Result<(), PortTaken> {
        let acl = self.dir.path().join("run/users.acl");
        let mut cmd = Command::new("sh");
        cmd.arg(compose_dir().join("config/redis/start.sh"))
            .arg(super::tool("redis-server"))
            .arg(self.dir.path().join("redis.conf"))
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .arg("--aclfile")
            .arg(&acl)
            .arg("--dir")
            .arg(self.data())
            .env("REDIS_SECRETS_DIR", &self.secrets)
            .env(
                "REDIS_ACL_TEMPLATE",
                compose_dir().join("config/redis/users.acl.template"),
            )
            .env("REDIS_ACL_FILE", &acl);
        self.peer.spawn(cmd);
        let port = self.port;
        let admin = read(&self.secrets.join("redis_admin_password"));
        self.peer.wait_ready(Duration::from_secs(20), |_| {
            let out = redis_cli(port, &admin, &["PING"]);
            if out.contains("PONG") {
                Ok(())
            } else {
                Err(out)
            }
        })
    }

    fn cli(&self, args: &[&str]) -> String {
        redis_cli(
            self.port,
            &read(&self.secrets.join("redis_admin_password")),
            args,
        )
    }

    /// Stops Redis as Docker does (SIGTERM): it saves its data files on the way out.
    fn stop(&mut self) {
        self.peer.terminate(Duration::from_secs(20));
    }

    fn start_again(&mut self) {
        let port = self.port;
        self.spawn()
            .unwrap_or_else(|PortTaken| panic!("Redis's port {port} was taken while it was down"));
    }

    /// Every key with its type, value (strings) and whether it expires.
    fn contents(&self) -> BTreeMap<String, String> {
        self.cli(&["--scan"])
            .lines()
            .filter(|k| !k.is_empty())
            .map(|key| {
                let kind = self.cli(&["TYPE", key]).trim().to_owned();
                let value = match kind.as_str() {
                    "string" => self.cli(&["GET", key]),
                    "hash" => self.cli(&["HGETALL", key]),
                    _ => String::new(),
                };
                let expires = self.cli(&["TTL", key]).trim() != "-1";
                (key.to_owned(), format!("{kind} {expires} {value}"))
            })
            .collect()
    }
}

/// redis-cli as the admin (`default`) user, the password in REDISCLI_AUTH.
fn redis_cli(port: u16, password: &str, args: &[&str]) -> String {
    let out = Command::new(super::tool("redis-cli"))
        .args([
            "--no-auth-warning",
            "--raw",
            "-h",
            "127.0.0.1",
            "-p",
            &port.to_string(),
        ])
        .args(args)
        .env("REDISCLI_AUTH", password)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("redis-cli: {e} (run {})", super::INSTALL));
    text(&out)
}

/// Runs backup.sh with `env` (and nothing of the caller's BACKUP_* variables).
fn backup_sh(env: &[(String, String)], args: &[&str]) -> Output {
    let mut cmd = Command::new("bash");
    cmd.arg(script()).args(args).stdin(Stdio::null());
    for (key, _) in std::env::vars() {
        if key.starts_with("BACKUP_") {
            cmd.env_remove(&key);
        }
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    run(&mut cmd)
}

/// The file state a deployment has: a few files in each volume the backup archives, acme.json
/// private as Traefik keeps it.
fn file_state(root: &Path) -> Vec<(String, PathBuf)> {
    let mut dirs = Vec::new();
    for (name, files) in [
        (
            "grafana",
            &[
                ("grafana.db", "SQLite format 3 dashboards"),
                ("plugins/p.json", "{}"),
            ][..],
        ),
        (
            "traefik-acme",
            &[("acme.json", "{\"letsencrypt\":{\"Certificates\":[]}}")],
        ),
        ("crowdsec-db", &[("crowdsec.db", "decisions and alerts")]),
        (
            "crowdsec-config",
            &[("local_api_credentials.yaml", "login: crowdsec")],
        ),
    ] {
        let dir = root.join(name);
        for (file, contents) in files {
            let path = dir.join(file);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, contents).unwrap();
        }
        dirs.push((name.to_owned(), dir));
    }
    std::fs::set_permissions(
        root.join("traefik-acme/acme.json"),
        std::fs::Permissions::from_mode(0o600),
    )
    .unwrap();
    dirs
}

/// Every file under `dir`: relative path → (mode, contents).
fn snapshot(dir: &Path) -> BTreeMap<String, (u32, Vec<u8>)> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap().flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else {
                let meta = std::fs::metadata(&path).unwrap();
                let rel = path.strip_prefix(dir).unwrap().display().to_string();
                out.insert(rel, (meta.mode() & 0o777, std::fs::read(&path).unwrap()));
            }
        }
    }
    out
}

/// Rows in both databases: a checksum of every row of every table, and the next sequence value.
fn database_state(pg: &Postgres) -> Vec<String> {
    let mut state = Vec::new();
    for db in ["jacker", "authentik"] {
        state.push(pg.psql(
            db,
            "SELECT count(*) || ' ' || md5(string_agg(u::text, ',' ORDER BY u.id)) FROM users u;\n\
             SELECT count(*) || ' ' || md5(string_agg(e::text, ',' ORDER BY e.id)) FROM events e;\n\
             SELECT last_value FROM events_id_seq;",
        ));
    }
    state
}

/// A new browser with `from`'s cookies: a restarted gate is a new process, and a pooled
/// connection to the old one would fail the first request.
fn fresh_browser(from: &Browser) -> Browser {
    let browser = Browser::new();
    for cookie in from.cookies() {
        browser.put_cookie(cookie);
    }
    browser
}

fn said(out: &Output) -> String {
    text(out)
}

/// The whole round trip: data in, backup, wipe, a corrupted copy refused, restore, data back, and
/// the session cookie issued before the backup accepted by a freshly started gate.
#[tokio::test]
async fn a_backup_restores_every_row_key_and_file_and_the_gate_keeps_its_sessions() {
    let tmp = tempfile::tempdir().unwrap();
    let secrets = tmp.path().join("secrets");
    let out = run_secrets_script(&secrets);
    assert!(out.status.success(), "secrets.sh: {}", text(&out));

    // PostgreSQL: the main database, and Authentik's under its own superuser and password.
    let pg = Postgres::start();
    let authentik_password = secrets.join("authentik_postgres_password");
    pg.psql(
        "postgres",
        &format!(
            "CREATE ROLE authentik LOGIN SUPERUSER PASSWORD '{}';\n\
             CREATE DATABASE jacker OWNER jacker;\nCREATE DATABASE authentik OWNER authentik;",
            read(&authentik_password)
        ),
    );
    for db in ["jacker", "authentik"] {
        pg.psql(
            db,
            "CREATE TABLE users (id int PRIMARY KEY, email text NOT NULL UNIQUE, data jsonb);\n\
             CREATE TABLE events (id bigserial PRIMARY KEY, user_id int REFERENCES users(id), at timestamptz, what text);\n\
             INSERT INTO users SELECT g, 'user' || g || '@example.com', jsonb_build_object('n', g) FROM generate_series(1, 2000) g;\n\
             INSERT INTO events (user_id, at, what) SELECT 1 + g % 2000, now() - g * interval '1 minute', md5(g::text) FROM generate_series(1, 5000) g;",
        );
    }
    let rows_before = database_state(&pg);
    assert!(rows_before[0].starts_with("2000 "), "{rows_before:?}");

    // Redis as the stack runs it, a session written by the gate at a real login, and other keys.
    let mut redis = StackRedis::start(&secrets);
    let gate_port = reserve_port();
    let idp = OidcProvider::setup()
        .redirect_uri(&format!("http://127.0.0.1:{gate_port}/oauth2/callback"))
        .start();
    let login = LoginGate::new(&idp, gate_port)
        .store(Store::Redis(format!(
            "redis://jacker-gate@127.0.0.1:{}/0",
            redis.port
        )))
        .extra(&format!(
            "redis_password_file = {:?}",
            secrets.join("redis_gate_password").display().to_string()
        ));
    let mut gate: Gate = login.start();
    let browser = Browser::new();
    let original = format!("http://127.0.0.1:{gate_port}/app/page");
    let (_, answer) = log_in(&browser, &gate, &idp, &original, ALICE).await;
    assert_eq!(
        answer.status,
        302,
        "the callback ends the login: {}\ngate:\n{}\n(peers: {LOGIN_INSTALL})",
        answer.describe(),
        gate.logs()
    );
    let accepted = |status: u16, email: Option<&str>| status == 200 && email == Some(ALICE);
    let check = browser
        .forward_auth(
            &format!("{}/auth", gate.url()),
            "GET",
            &original,
            false,
            &[],
        )
        .await;
    assert!(
        accepted(check.status, check.header("X-Auth-Request-Email")),
        "the session works before the backup: {}",
        check.describe()
    );
    for i in 0..50 {
        redis.cli(&["SET", &format!("app:item:{i}"), &format!("value-{i}")]);
    }
    redis.cli(&["HSET", "app:hash", "a", "1", "b", "2"]);
    let keys_before = redis.contents();
    assert!(
        keys_before
            .keys()
            .any(|k| k.starts_with("jacker-gate:") && keys_before[k].starts_with("string true")),
        "the gate wrote an expiring session: {keys_before:?}"
    );

    let files = tmp.path().join("volumes");
    let dirs = file_state(&files);
    let files_before: Vec<_> = dirs.iter().map(|(_, d)| snapshot(d)).collect();

    let backups = tmp.path().join("backups");
    let entry = |name: &str, db: &str, user: &str, password: &Path| {
        format!(
            "{name}:127.0.0.1:{}:{db}:{user}:{}",
            pg.port,
            password.display()
        )
    };
    let env: Vec<(String, String)> = [
        ("BACKUP_DIR", backups.display().to_string()),
        (
            "BACKUP_POSTGRES",
            format!(
                "{} {}",
                entry("main", "jacker", "jacker", &pg.password_file()),
                entry("authentik", "authentik", "authentik", &authentik_password)
            ),
        ),
        ("BACKUP_REDIS", format!("127.0.0.1:{}", redis.port)),
        ("BACKUP_REDIS_USER", "backup".to_owned()),
        (
            "BACKUP_REDIS_PASSWORD_FILE",
            secrets.join("redis_backup_password").display().to_string(),
        ),
        ("BACKUP_REDIS_DATA_DIR", redis.data().display().to_string()),
        (
            "BACKUP_FILES",
            dirs.iter()
                .map(|(n, d)| format!("{n}:{}", d.display()))
                .collect::<Vec<_>>()
                .join(" "),
        ),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();

    // The backup: one dated folder, a manifest of every file with its size and checksum.
    let out = backup_sh(&env, &["backup"]);
    assert!(out.status.success(), "backup: {}", said(&out));
    let name = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    assert!(
        name.len() >= 16 && name.ends_with('Z') && name.contains('T'),
        "a dated folder: {name:?}"
    );
    let folder = backups.join(&name);
    let manifest = read(&folder.join("MANIFEST"));
    for file in [
        "postgres/main.dump",
        "postgres/authentik.dump",
        "redis/dump.rdb",
        "files/grafana.tar.gz",
        "files/traefik-acme.tar.gz",
        "files/crowdsec-db.tar.gz",
        "files/crowdsec-config.tar.gz",
    ] {
        let line = manifest
            .lines()
            .find(|l| l.ends_with(&format!("  {file}")))
            .unwrap_or_else(|| panic!("{file} in the manifest:\n{manifest}"));
        let fields: Vec<&str> = line.split_whitespace().collect();
        let bytes = std::fs::read(folder.join(file)).unwrap();
        assert_eq!(fields[1], bytes.len().to_string(), "{line}");
        assert_eq!(fields[0].len(), 64, "{line}");
        assert!(
            std::fs::read(folder.join(file))
                .unwrap()
                .starts_with(match file {
                    f if f.ends_with(".dump") => &b"PGDMP"[..],
                    f if f.ends_with(".rdb") => &b"REDIS"[..],
                    _ => &b"\x1f\x8b"[..],
                }),
            "{file} is what it claims"
        );
    }
    // No password in what the script printed, nor in the backup's manifest.
    for secret in ["redis_backup_password", "authentik_postgres_password"] {
        let value = read(&secrets.join(secret));
        assert!(!said(&out).contains(&value) && !manifest.contains(&value));
    }
    let listed = backup_sh(&env, &["list"]);
    assert!(
        String::from_utf8_lossy(&listed.stdout).contains(&name),
        "{}",
        said(&listed)
    );
    let verified = backup_sh(&env, &["verify", &name]);
    assert!(verified.status.success(), "verify: {}", said(&verified));
    assert!(said(&verified).contains("is good"), "{}", said(&verified));

    // Disaster: every table, key and file gone.
    gate.stop();
    for db in ["jacker", "authentik"] {
        pg.psql(db, "DROP TABLE events, users;");
    }
    redis.cli(&["FLUSHALL"]);
    for (_, dir) in &dirs {
        std::fs::remove_dir_all(dir).unwrap();
        std::fs::create_dir(dir).unwrap();
    }
    gate.start_again();
    let refused = fresh_browser(&browser)
        .forward_auth(
            &format!("{}/auth", gate.url()),
            "GET",
            &original,
            false,
            &[],
        )
        .await;
    assert!(
        !accepted(refused.status, refused.header("X-Auth-Request-Email")),
        "with Redis wiped the session is gone: {}",
        refused.describe()
    );
    gate.stop();
    redis.stop();

    // A copy with one byte changed fails verify, by name, and is never restored.
    let corrupt = format!("{name}-copy");
    let copied = Command::new("cp")
        .arg("-a")
        .arg(&folder)
        .arg(backups.join(&corrupt))
        .status()
        .unwrap();
    assert!(copied.success());
    let dump = backups.join(&corrupt).join("postgres/main.dump");
    let mut bytes = std::fs::read(&dump).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x01;
    std::fs::write(&dump, bytes).unwrap();
    let out = backup_sh(&env, &["verify", &corrupt]);
    assert!(!out.status.success(), "verify passes a corrupted backup");
    let message = said(&out);
    assert!(
        message.contains("postgres/main.dump has SHA-256")
            && message.contains("is CORRUPT")
            && message.contains("never restore it"),
        "{message}"
    );
    let out = backup_sh(&env, &["restore", &corrupt]);
    assert!(!out.status.success(), "a corrupted backup was restored");
    assert!(said(&out).contains("restore refused"), "{}", said(&out));
    assert_eq!(
        pg.psql(
            "jacker",
            "SELECT count(*) FROM pg_tables WHERE tablename = 'users'"
        ),
        "0",
        "nothing of the corrupted backup reached PostgreSQL"
    );
    assert!(
        std::fs::read_dir(&dirs[0].1).unwrap().next().is_none(),
        "nothing of it reached the files"
    );

    // Restore refuses while Redis runs (it would write its own data over the restored files).
    redis.start_again();
    let out = backup_sh(&env, &["restore", &name]);
    assert!(!out.status.success());
    assert!(
        said(&out).contains("stop it before a restore"),
        "{}",
        said(&out)
    );
    redis.stop();

    // The restore, into the stopped stack, then everything started again.
    let out = backup_sh(&env, &["restore", &name]);
    assert!(out.status.success(), "restore: {}", said(&out));
    redis.start_again();
    assert_eq!(database_state(&pg), rows_before, "every row is back");
    assert_eq!(redis.contents(), keys_before, "every key is back");
    for ((_, dir), before) in dirs.iter().zip(&files_before) {
        assert_eq!(&snapshot(dir), before, "{} is back", dir.display());
    }
    gate.start_again();
    let check = fresh_browser(&browser)
        .forward_auth(
            &format!("{}/auth", gate.url()),
            "GET",
            &original,
            false,
            &[],
        )
        .await;
    assert!(
        accepted(check.status, check.header("X-Auth-Request-Email")),
        "the cookie issued before the backup is accepted after the restore: {}\ngate:\n{}",
        check.describe(),
        gate.logs()
    );
}

/// A backup folder as backup.sh writes one, without data: for the retention and the healthcheck.
fn fake_backup(dir: &Path, name: &str, created: u64) {
    let folder = dir.join(name);
    std::fs::create_dir_all(&folder).unwrap();
    std::fs::write(
        folder.join("MANIFEST"),
        format!("# jacker backup\n# created {created}\n"),
    )
    .unwrap();
}

fn names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| !n.starts_with('.'))
        .collect();
    names.sort();
    names
}

#[test]
fn retention_keeps_the_last_n_and_one_a_day_and_the_healthcheck_follows_the_schedule() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("backups");
    // 2026-11-10T00:00:00Z; backups every 6 hours for 6 days before it.
    let now: u64 = 1_794_268_800;
    let mut all = Vec::new();
    for i in (1..=24u64).rev() {
        let created = now - i * 6 * 3600 + 60;
        // Names in time order, as UTC timestamps are.
        let name = format!("{created}T000000Z");
        fake_backup(&dir, &name, created);
        all.push((name, created));
    }
    fake_backup(&dir, "1794268000T000000Z.partial", now - 100);
    let env = |extra: &[(&str, &str)]| -> Vec<(String, String)> {
        let mut env = vec![
            ("BACKUP_DIR".to_owned(), dir.display().to_string()),
            ("BACKUP_NOW".to_owned(), now.to_string()),
            ("BACKUP_KEEP_LAST".to_owned(), "3".to_owned()),
            ("BACKUP_KEEP_DAILY_DAYS".to_owned(), "4".to_owned()),
            ("BACKUP_INTERVAL".to_owned(), "6h".to_owned()),
        ];
        env.extend(
            extra
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
        );
        env
    };
    let out = backup_sh(&env(&[]), &["prune"]);
    assert!(out.status.success(), "{}", said(&out));
    // The newest 3, and the newest of each of the last 4 days (today has none yet: 3 days more).
    let mut want: Vec<String> = all[all.len() - 3..]
        .iter()
        .map(|(n, _)| n.clone())
        .collect();
    for day in 1..4u64 {
        let day_start = (now / 86400 - day) * 86400;
        let newest = all
            .iter()
            .filter(|(_, c)| *c >= day_start && *c < day_start + 86400)
            .map(|(n, _)| n.clone())
            .max()
            .unwrap();
        if !want.contains(&newest) {
            want.push(newest);
        }
    }
    want.push("1794268000T000000Z.partial".to_owned()); // a backup in progress is left alone
    want.sort();
    assert_eq!(names(&dir), want, "{}", said(&out));

    // Health: the newest is 5 h 59 min old; fine within 6 h + 1 h, failing 2 h later.
    let out = backup_sh(&env(&[]), &["health"]);
    assert!(out.status.success(), "{}", said(&out));
    let later = (now + 2 * 3600).to_string();
    let out = backup_sh(&env(&[("BACKUP_NOW", &later)]), &["health"]);
    assert!(!out.status.success());
    assert!(
        said(&out).contains("more than BACKUP_INTERVAL + BACKUP_HEALTH_GRACE"),
        "{}",
        said(&out)
    );
    let empty = tmp.path().join("empty");
    let out = backup_sh(
        &[("BACKUP_DIR".to_owned(), empty.display().to_string())],
        &["health"],
    );
    assert!(!out.status.success());
    assert!(said(&out).contains("no backup yet"), "{}", said(&out));

    // Settings that would break the schedule or delete everything are refused, by name.
    for (key, value) in [("BACKUP_INTERVAL", "soon"), ("BACKUP_KEEP_LAST", "0")] {
        let out = backup_sh(&env(&[(key, value)]), &["prune"]);
        assert!(!out.status.success());
        assert!(
            said(&out).contains(&format!("{key}={value}")),
            "{}",
            said(&out)
        );
    }
    assert_eq!(names(&dir), want, "a refused prune deletes nothing");
}

/// A backup folder is only regular files, each listed in its manifest inside the folder: a link
/// to a file elsewhere, or a manifest naming `../`, fails `verify` (so `restore` never reads
/// outside the backup). A folder without a manifest (one still being copied in) is not a backup,
/// and never stops `list`, the retention or the healthcheck.
#[test]
fn verify_refuses_links_and_paths_outside_and_half_copied_folders_are_skipped() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("backups");
    let now: u64 = 1_794_268_800;
    let name = format!("{now}T000000Z");
    let folder = dir.join(&name);
    std::fs::create_dir_all(folder.join("files")).unwrap();
    // A real archive, so that the trial step has something to read.
    let src = tmp.path().join("grafana");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("grafana.db"), "rows").unwrap();
    let archive = folder.join("files/grafana.tar.gz");
    let tar = Command::new("tar")
        .arg("-czf")
        .arg(&archive)
        .arg("-C")
        .arg(&src)
        .arg(".")
        .status()
        .unwrap();
    assert!(tar.success());
    let manifest = |extra: &str| {
        let bytes = std::fs::read(&archive).unwrap();
        let sum = Command::new("sha256sum").arg(&archive).output().unwrap();
        let sum = String::from_utf8_lossy(&sum.stdout);
        let sum = sum.split_whitespace().next().unwrap().to_owned();
        let text = format!(
            "# jacker backup\n# created {now}\n{sum} {} files/grafana.tar.gz\n{extra}",
            bytes.len()
        );
        std::fs::write(folder.join("MANIFEST"), text).unwrap();
    };
    let env = vec![
        ("BACKUP_DIR".to_owned(), dir.display().to_string()),
        ("BACKUP_NOW".to_owned(), now.to_string()),
    ];
    manifest("");
    let out = backup_sh(&env, &["verify", &name]);
    assert!(out.status.success(), "a good folder: {}", said(&out));

    // A link the manifest does not list, pointing outside.
    let outside = tmp.path().join("evil.tar.gz");
    std::fs::copy(&archive, &outside).unwrap();
    std::os::unix::fs::symlink(&outside, folder.join("files/traefik-acme.tar.gz")).unwrap();
    let out = backup_sh(&env, &["verify", &name]);
    assert!(!out.status.success(), "a link passed: {}", said(&out));
    assert!(said(&out).contains("not a regular file"), "{}", said(&out));
    assert!(said(&out).contains("CORRUPT"), "{}", said(&out));
    std::fs::remove_file(folder.join("files/traefik-acme.tar.gz")).unwrap();

    // A manifest naming a file outside the folder, with the right checksum.
    let sum = Command::new("sha256sum").arg(&outside).output().unwrap();
    let sum = String::from_utf8_lossy(&sum.stdout);
    let sum = sum.split_whitespace().next().unwrap();
    let size = std::fs::metadata(&outside).unwrap().len();
    manifest(&format!("{sum} {size} ../../evil.tar.gz\n"));
    let out = backup_sh(&env, &["verify", &name]);
    assert!(
        !out.status.success(),
        "a path outside passed: {}",
        said(&out)
    );
    assert!(
        said(&out).contains("outside the backup folder"),
        "{}",
        said(&out)
    );
    manifest("");

    // A folder being copied in: no manifest yet, and a name with a space and a `;`.
    std::fs::create_dir_all(dir.join(format!("{}T000000Z x;id", now + 1))).unwrap();
    for args in [&["list"][..], &["health"], &["prune"]] {
        let out = backup_sh(&env, args);
        assert!(out.status.success(), "{args:?}: {}", said(&out));
    }
    let out = backup_sh(&env, &["list"]);
    assert!(said(&out).contains(&name), "{}", said(&out));
    assert!(
        dir.join(format!("{}T000000Z x;id", now + 1)).is_dir(),
        "a folder without a manifest is not pruned"
    );
}

/// The container drops root at start and keeps one capability, reading what it does not own: with
/// the capabilities backup.yml grants, under no-new-privileges, the script reads a root-only
/// acme.json and writes its backup as its own user. (Run as root; the tests run as root in CI.)
#[test]
fn the_backup_service_drops_root_and_still_reads_root_only_files() {
    let svc = service("backup");
    let caps: Vec<String> = super::strs(&svc["cap_add"])
        .iter()
        .map(|c| c.to_ascii_lowercase())
        .collect();
    assert_eq!(super::strs(&svc["cap_drop"]), ["ALL"]);
    let run_as = svc["environment"]["BACKUP_RUN_AS"]
        .as_str()
        .unwrap()
        .to_owned();
    if !running_as_root() {
        eprintln!("not root: the privilege drop cannot be exercised here");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let acme = tmp.path().join("acme");
    std::fs::create_dir(&acme).unwrap();
    write_private(&acme.join("acme.json"), "{\"private\":true}");
    let backups = tmp.path().join("backups");
    std::fs::create_dir(&backups).unwrap();
    let uid: u32 = run_as.parse().unwrap();
    chown(&backups, uid, uid);
    let bounding = caps
        .iter()
        .map(|c| format!("+{c}"))
        .collect::<Vec<_>>()
        .join(",");
    let out = run(Command::new("setpriv")
        .arg(format!("--bounding-set=-all,{bounding}"))
        .arg("--inh-caps=-all")
        .arg("--no-new-privs")
        .args(["--", "bash"])
        .arg(script())
        .arg("backup")
        .env("BACKUP_RUN_AS", &run_as)
        .env("BACKUP_DIR", &backups)
        .env("BACKUP_FILES", format!("traefik-acme:{}", acme.display()))
        .stdin(Stdio::null()));
    assert!(out.status.success(), "{}", said(&out));
    let name = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let archive = backups.join(&name).join("files/traefik-acme.tar.gz");
    assert_eq!(
        std::fs::metadata(&archive).unwrap().uid(),
        uid,
        "written as {run_as}"
    );
    let listing = run(Command::new("tar").arg("-tzvf").arg(&archive));
    assert!(text(&listing).contains("acme.json"), "{}", text(&listing));
    // The dropped process cannot write what it does not own.
    let out = run(Command::new("setpriv")
        .arg(format!("--reuid={uid}"))
        .arg(format!("--regid={uid}"))
        .args(["--clear-groups", "--inh-caps=-all,+dac_read_search"])
        .args(["--ambient-caps=-all,+dac_read_search", "--", "sh", "-c"])
        .arg(format!(
            "cat {0} >/dev/null && ! echo x 2>/dev/null >>{0}",
            acme.join("acme.json").display()
        )));
    assert!(
        out.status.success(),
        "reads but cannot write: {}",
        said(&out)
    );
}

/// The resolved project (what `docker compose up` sees, without `--all-resources`): the seven
/// networks, the backup service where it must be and nowhere else, its mounts and secrets.
#[test]
fn the_backup_service_completes_the_seven_networks_and_sits_only_where_it_must() {
    let dir = compose_dir();
    let resolved = |profiles: &[&str]| -> serde_json::Value {
        let mut cmd = Command::new(compose_bin());
        cmd.arg("--project-directory")
            .arg(&dir)
            .arg("-f")
            .arg(dir.join("docker-compose.yml"))
            .arg("--env-file")
            .arg(dir.join(".env.sample"));
        for p in profiles {
            cmd.args(["--profile", p]);
        }
        let out = run(cmd
            .args(["config", "--format", "json"])
            .env_remove("COMPOSE_PROFILES"));
        assert!(out.status.success(), "{}", text(&out));
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let project = resolved(&[]);
    let networks: Vec<&String> = project["networks"].as_object().unwrap().keys().collect();
    assert_eq!(
        networks,
        [
            "backup",
            "cache",
            "database",
            "default",
            "monitoring",
            "socket_proxy",
            "traefik_proxy"
        ],
        "every network is used, so Compose keeps all seven"
    );
    for (name, svc) in project["services"].as_object().unwrap() {
        let on_backup = svc["networks"].get("backup").is_some();
        assert_eq!(on_backup, name == "backup", "{name} on the backup network");
    }
    let svc = &project["services"]["backup"];
    let nets: Vec<&String> = svc["networks"].as_object().unwrap().keys().collect();
    assert_eq!(nets, ["backup", "cache", "database"]);
    assert!(
        svc["ports"].is_null(),
        "the backup service publishes nothing"
    );
    let mounts: BTreeMap<String, (String, bool)> = svc["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| {
            (
                v["target"].as_str().unwrap().to_owned(),
                (
                    v["source"].as_str().unwrap().to_owned(),
                    v["read_only"] == true,
                ),
            )
        })
        .collect();
    let volume = |name: &str, ro: bool| (name.to_owned(), ro);
    assert_eq!(
        mounts,
        BTreeMap::from([
            (
                "/usr/local/bin/backup.sh".to_owned(),
                (script().display().to_string(), true)
            ),
            ("/backups".to_owned(), volume("backups", false)),
            ("/data/grafana".to_owned(), volume("grafana-data", true)),
            (
                "/data/traefik-acme".to_owned(),
                volume("traefik-acme", true)
            ),
            ("/data/crowdsec-db".to_owned(), volume("crowdsec-db", true)),
            (
                "/data/crowdsec-config".to_owned(),
                volume("crowdsec-config", true)
            ),
        ]),
        "the tests' script is the container's, and every other service's volume is read-only"
    );
    // The volumes are the services' own, not new ones of the same name.
    for (svc_name, source, target) in [
        ("grafana", "grafana-data", "/var/lib/grafana"),
        ("traefik", "traefik-acme", "/acme"),
        ("crowdsec", "crowdsec-db", "/var/lib/crowdsec/data"),
        ("crowdsec", "crowdsec-config", "/etc/crowdsec"),
        ("redis", "redis-data", "/data"),
    ] {
        assert!(
            project["services"][svc_name]["volumes"]
                .as_array()
                .unwrap()
                .iter()
                .any(|v| v["source"] == source && v["target"] == target),
            "{svc_name} keeps {source} at {target}"
        );
    }
    let env = &svc["environment"];
    let files = env["BACKUP_FILES"].as_str().unwrap();
    for target in mounts.keys().filter(|t| t.starts_with("/data/")) {
        assert!(
            files.contains(&format!(":{target}")),
            "{target} is archived: {files}"
        );
    }
    let secrets: Vec<String> = svc["secrets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["source"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        secrets,
        [
            "postgres_password",
            "authentik_postgres_password",
            "redis_backup_password"
        ]
    );
    assert_eq!(
        env["BACKUP_POSTGRES"],
        "main:postgres:5432:jacker:jacker:/run/secrets/postgres_password"
    );
    assert_eq!(env["BACKUP_REDIS"], "redis:6379");
    assert_eq!(
        super::strs(&svc["healthcheck"]["test"]),
        ["CMD", "/usr/local/bin/backup.sh", "health"]
    );
    assert!(
        project["services"]["redis"]["secrets"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["source"] == "redis_backup_password"),
        "Redis builds the backup user's ACL entry from the same secret"
    );
    // The image: the backup user the service drops to, and the programs the script runs.
    let dockerfile = read(&compose_dir().join("config/backup/Dockerfile"));
    let run_as = env["BACKUP_RUN_AS"].as_str().unwrap();
    assert!(
        dockerfile.contains(&format!("-u {run_as} ")),
        "{dockerfile}"
    );
    for package in ["redis", "setpriv", "coreutils", "findutils", "tar"] {
        assert!(dockerfile.contains(&format!(" {package} ")), "{package}");
    }
    let postgres_major = project["services"]["postgres"]["image"]
        .as_str()
        .unwrap()
        .split(':')
        .nth(1)
        .unwrap()
        .split('.')
        .next()
        .unwrap()
        .to_owned();
    assert!(
        dockerfile.contains(&format!("FROM postgres:{postgres_major}.")),
        "pg_dump as new as the main server ({postgres_major})"
    );

    // The restore service: only with its profile, the same networks, the volumes writable.
    assert!(project["services"].get("backup-restore").is_none());
    let with_restore = resolved(&["restore"]);
    let restore = &with_restore["services"]["backup-restore"];
    assert_eq!(
        restore["networks"]
            .as_object()
            .unwrap()
            .keys()
            .collect::<Vec<_>>(),
        ["backup", "cache", "database"]
    );
    for v in restore["volumes"].as_array().unwrap() {
        let target = v["target"].as_str().unwrap();
        if target.starts_with("/data/") {
            assert_ne!(v["read_only"], true, "{target} is written by a restore");
        }
    }
    assert_eq!(
        restore["environment"]["BACKUP_REDIS_DATA_DIR"], "/data/redis",
        "Redis's volume is where the restore writes it"
    );
}

/// `validate` checks the backup settings: a schedule backup.sh accepts, a retention that keeps
/// something, and Authentik's database backed up when its profile is on.
#[test]
fn validate_checks_the_backup_settings() {
    let tmp = tempfile::tempdir().unwrap();
    let secrets = tmp.path().join("secrets");
    assert!(run_secrets_script(&secrets).status.success());
    let sample = read(&compose_dir().join(".env.sample"));
    let base = sample
        .replace("DOMAIN=example.com", "DOMAIN=jacker.test")
        .replace(
            "OAUTH_CLIENT_ID=000000000000-placeholder.apps.googleusercontent.com",
            "OAUTH_CLIENT_ID=1234-abc.apps.googleusercontent.com",
        )
        .replace(
            "OAUTH_ALLOWED_DOMAIN=example.com",
            "OAUTH_ALLOWED_DOMAIN=jacker.test",
        );
    let validate = |extra: &str| -> String {
        let env = tmp.path().join("env");
        write_private(&env, &format!("{base}\n{extra}\n"));
        let out = run(Command::new("bash")
            .arg(compose_dir().join("validate"))
            .env("ENV_FILE", &env)
            .env("SECRETS_DIR", &secrets)
            .env("DOCKER_COMPOSE", compose_bin())
            .env("GATE_BIN", GATE)
            .env("SKIP_PORT_CHECK", "1")
            .env_remove("COMPOSE_PROFILES")
            .stdin(Stdio::null()));
        text(&out)
    };
    let said = validate("");
    assert!(
        said.contains("ok    backups every 1d, keeping the last 7"),
        "{said}"
    );
    assert!(
        said.contains("ok    secret redis_backup_password"),
        "{said}"
    );
    let said = validate("BACKUP_INTERVAL=soon\nBACKUP_KEEP_LAST=0\nCOMPOSE_PROFILES=authentik");
    for line in [
        "FAIL  BACKUP_INTERVAL=soon is not a duration",
        "FAIL  BACKUP_KEEP_LAST=0 is not a whole number of 1 or more",
        "FAIL  the authentik profile is on, but BACKUP_POSTGRES does not back up authentik-postgres",
    ] {
        assert!(said.contains(line), "{line}:\n{said}");
    }
    let said = validate(
        "COMPOSE_PROFILES=authentik\nBACKUP_POSTGRES=main:postgres:5432:jacker:jacker:/run/secrets/postgres_password \
         authentik:authentik-postgres:5432:authentik:authentik:/run/secrets/authentik_postgres_password",
    );
    assert!(
        said.contains("ok    backups every 1d") && said.contains("2 database(s)"),
        "{said}"
    );
    let said = validate("BACKUP_POSTGRES=main:postgres:5432:jacker:jacker:/etc/shadow");
    assert!(said.contains("is not one of the stack's secrets"), "{said}");
}
