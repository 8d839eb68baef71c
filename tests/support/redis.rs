//! A throw-away Redis 7 server for one test: no persistence, bound to 127.0.0.1 on a free port,
//! optionally with a password, stopped by its PID when dropped.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

use super::{free_port, kill_and_reap, require_binary, send_signal};

const START_TIMEOUT: Duration = Duration::from_secs(10);

pub(crate) struct Redis {
    dir: TempDir,
    port: u16,
    password: Option<String>,
    server: PathBuf,
    child: Option<Child>,
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
        File::create(dir.path().join("redis.log")).expect("create Redis log");
        let mut redis = Redis {
            dir,
            port: free_port(),
            password,
            server,
            child: None,
        };
        redis.spawn();
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
        self.child.as_ref().map(Child::id)
    }

    pub(crate) fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("redis.log")).unwrap_or_default()
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
        if let Some(mut child) = self.child.take() {
            kill_and_reap(&mut child);
        }
    }

    /// Starts an empty server again on the same port, with the same password.
    pub(crate) fn start_again(&mut self) {
        self.stop();
        self.spawn();
    }

    /// Freezes the server (SIGSTOP): connections hang instead of failing.
    pub(crate) fn pause(&self) {
        send_signal(self.pid().expect("Redis is running"), "STOP");
    }

    /// Thaws a paused server (SIGCONT).
    pub(crate) fn resume(&self) {
        send_signal(self.pid().expect("Redis is running"), "CONT");
    }

    fn spawn(&mut self) {
        let log = OpenOptions::new()
            .append(true)
            .open(self.dir.path().join("redis.log"))
            .expect("open Redis log");
        let mut command = Command::new(&self.server);
        command
            .args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1"])
            .args(["--save", ""])
            .args(["--appendonly", "no"])
            .arg("--dir")
            .arg(self.dir.path())
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone log file"))
            .stderr(log);
        if let Some(password) = &self.password {
            command.args(["--requirepass", password]);
        }
        self.child = Some(command.spawn().expect("spawn redis-server"));
        self.wait_ready();
    }

    fn wait_ready(&mut self) {
        let start = Instant::now();
        loop {
            if self.ping().is_ok() {
                return;
            }
            let child = self.child.as_mut().expect("Redis spawned");
            if let Ok(Some(status)) = child.try_wait() {
                panic!(
                    "redis-server exited during start-up ({status}):\n{}",
                    self.log()
                );
            }
            if start.elapsed() > START_TIMEOUT {
                panic!(
                    "Redis not ready on {} after {START_TIMEOUT:?}:\n{}",
                    self.addr(),
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `AUTH` (when a password is set) and `PING` over RESP; `Ok` once the server answers `+PONG`.
    fn ping(&self) -> std::io::Result<()> {
        let timeout = Duration::from_secs(1);
        let mut stream = TcpStream::connect_timeout(&self.addr(), timeout)?;
        stream.set_read_timeout(Some(timeout))?;
        let mut request = String::new();
        if let Some(password) = &self.password {
            request.push_str(&format!(
                "*2\r\n$4\r\nAUTH\r\n${}\r\n{password}\r\n",
                password.len()
            ));
        }
        request.push_str("*1\r\n$4\r\nPING\r\n");
        stream.write_all(request.as_bytes())?;
        let mut seen = Vec::new();
        let mut buf = [0u8; 256];
        while !String::from_utf8_lossy(&seen).contains("+PONG") {
            let n = stream.read(&mut buf)?;
            if n == 0 {
                break;
            }
            seen.extend_from_slice(&buf[..n]);
            if seen.starts_with(b"-") {
                break;
            }
        }
        if String::from_utf8_lossy(&seen).contains("+PONG") {
            Ok(())
        } else {
            Err(std::io::Error::other(format!(
                "unexpected reply: {}",
                String::from_utf8_lossy(&seen)
            )))
        }
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.stop();
    }
}
