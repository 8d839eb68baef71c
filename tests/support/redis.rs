//! A throw-away Redis 7 server for one test: no persistence, bound to 127.0.0.1 on a free port,
//! optionally with a password, stopped by its PID when dropped.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use tempfile::TempDir;

use super::peer::{retry_on_taken_port, Peer, PortTaken};
use super::{require_binary, reserve_port};

const START_TIMEOUT: Duration = Duration::from_secs(10);

/// Redis cannot listen on port 0 (that turns TCP off), so its port is picked before start and a
/// taken one is replaced (see `peer`); `start_again` keeps the port, which the gate knows.
pub(crate) struct Redis {
    /// First, so that the process is stopped before its directory is removed.
    peer: Peer,
    dir: TempDir,
    port: u16,
    password: Option<String>,
    server: PathBuf,
}

impl Redis {
    /// A Redis without authentication.
    pub(crate) fn start() -> Redis {
        Redis::launch(None)
    }

    /// A Redis that requires `AUTH password` (`--requirepass`).
    pub(crate) fn start_with_password(password: &str) -> Redis {
        Redis::launch(Some(password.to_owned()))
    }

    fn launch(password: Option<String>) -> Redis {
        let server = require_binary("redis-server");
        let dir = tempfile::Builder::new()
            .prefix("jacker-gate-redis-")
            .tempdir()
            .expect("create Redis temp dir");
        let mut redis = Redis {
            peer: Peer::new("redis-server"),
            dir,
            port: 0,
            password,
            server,
        };
        retry_on_taken_port("redis-server", || {
            redis.port = reserve_port();
            redis.spawn()
        });
        redis
    }

    /// `redis://127.0.0.1:PORT/0`; the password, if any, is not in it (the gate reads it from a
    /// file).
    pub(crate) fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    pub(crate) fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    pub(crate) fn port(&self) -> u16 {
        self.port
    }

    pub(crate) fn password(&self) -> Option<&str> {
        self.password.as_deref()
    }

    pub(crate) fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub(crate) fn pid(&self) -> Option<u32> {
        self.peer.pid()
    }

    pub(crate) fn log(&self) -> String {
        self.peer.logs()
    }

    /// Runs one command with `redis-cli` against this server and returns its output (raw mode,
    /// one reply element per line).
    pub(crate) fn cli(&self, args: &[&str]) -> String {
        let mut command = Command::new(require_binary("redis-cli"));
        command
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string(), "--raw"])
            .stdin(Stdio::null());
        if let Some(password) = &self.password {
            command.args(["--no-auth-warning", "-a", password]);
        }
        let output = command.args(args).output().expect("run redis-cli");
        assert!(
            output.status.success(),
            "redis-cli {args:?} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// Kills the server (by PID) and waits for it. Everything it held is gone (no persistence).
    pub(crate) fn stop(&mut self) {
        self.peer.stop();
    }

    /// Starts an empty server again on the same port, with the same password.
    pub(crate) fn start_again(&mut self) {
        let port = self.port;
        self.spawn().unwrap_or_else(|PortTaken| {
            panic!(
                "Redis's port {port} was taken while it was down:\n{}",
                self.log()
            )
        });
    }

    /// Freezes the server (SIGSTOP): connections hang instead of failing.
    pub(crate) fn pause(&self) {
        self.peer.pause();
    }

    /// Thaws a paused server (SIGCONT).
    pub(crate) fn resume(&self) {
        self.peer.resume();
    }

    fn spawn(&mut self) -> Result<(), PortTaken> {
        let mut command = Command::new(&self.server);
        command
            .args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1"])
            .args(["--save", ""])
            .args(["--appendonly", "no"])
            .arg("--dir")
            .arg(self.dir.path())
            .current_dir(self.dir.path());
        if let Some(password) = &self.password {
            command.args(["--requirepass", password]);
        }
        self.peer.spawn(command);
        let (addr, password) = (self.addr(), self.password.clone());
        self.peer.wait_ready(START_TIMEOUT, |peer| {
            let pid = ping(addr, password.as_deref()).map_err(|e| e.to_string())?;
            // Another Redis on this port would answer too; only ours counts.
            if Some(pid) == peer.pid() {
                Ok(())
            } else {
                Err(format!("a Redis with PID {pid} answers on {addr}"))
            }
        })
    }
}

/// `AUTH` (when a password is set), `PING` and `INFO server` over RESP; once the server answers
/// `+PONG`, returns its `process_id`.
pub(crate) fn ping(addr: SocketAddr, password: Option<&str>) -> std::io::Result<u32> {
    let timeout = Duration::from_secs(1);
    let mut stream = TcpStream::connect_timeout(&addr, timeout)?;
    stream.set_read_timeout(Some(timeout))?;
    let mut request = String::new();
    if let Some(password) = password {
        request.push_str(&format!(
            "*2\r\n$4\r\nAUTH\r\n${}\r\n{password}\r\n",
            password.len()
        ));
    }
    request.push_str("*1\r\n$4\r\nPING\r\n*2\r\n$4\r\nINFO\r\n$6\r\nserver\r\n");
    stream.write_all(request.as_bytes())?;
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    let pid = |seen: &[u8]| {
        let text = String::from_utf8_lossy(seen);
        let pid = text
            .split("process_id:")
            .nth(1)?
            .split_whitespace()
            .next()?
            .parse()
            .ok()?;
        text.contains("+PONG").then_some(pid)
    };
    while pid(&seen).is_none() {
        let n = stream.read(&mut buf)?;
        seen.extend_from_slice(&buf[..n]);
        if n == 0 || seen.starts_with(b"-") {
            break;
        }
    }
    pid(&seen).ok_or_else(|| {
        std::io::Error::other(format!(
            "unexpected reply: {}",
            String::from_utf8_lossy(&seen)
        ))
    })
}
