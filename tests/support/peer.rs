//! One process the tests run and talk to (Redis, a CrowdSec LAPI, the gate, Traefik, ...): the
//! single place that spawns it, captures what it prints, waits until it is ready, signals and
//! stops it by its PID, and shows its logs when a test fails.
//!
//! Every peer module builds its `Command` and its readiness probe and hands both to a [`Peer`];
//! nothing else in the harness spawns a long-running process. A `Peer` keeps its logs across
//! restarts (`spawn` again after `stop`), so a test can search everything the process ever said.
//!
//! Ports: a peer that can bind `127.0.0.1:0` and say which port it got (the gate, the OpenID
//! provider) does so, and there is nothing to race. A peer that needs its port in advance
//! (Redis, CrowdSec, Traefik) gets one from [`super::reserve_port`] and is started through
//! [`retry_on_taken_port`]: when another process took the port in between, the peer fails to
//! bind, says so in its log, and is started again on a fresh port. A port that other peers were
//! already told (a proxy's port in the gate's config, a port kept across a restart) cannot be
//! changed; there a bind failure ends the test with a message that names the cause.

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How often a readiness probe or an exit is polled.
const POLL: Duration = Duration::from_millis(20);

/// How many lines of a peer's log a failing test prints when the peer is dropped.
const LOG_TAIL_LINES: usize = 200;

/// How many fresh ports [`retry_on_taken_port`] tries before it gives up.
const PORT_ATTEMPTS: usize = 5;

/// The peer could not bind its port: another process holds it.
#[derive(Debug)]
pub(crate) struct PortTaken;

/// A process started by a test, stopped (by its PID) when dropped.
pub(crate) struct Peer {
    name: String,
    child: Option<Child>,
    /// stdout and stderr, one line per line, in the order they arrived, across restarts.
    logs: Arc<Mutex<String>>,
    /// stdout alone (for a process whose output is its result).
    stdout: Arc<Mutex<String>>,
    /// A file every captured line is also appended to (a log shipper's file).
    tee: Option<Arc<Mutex<File>>>,
    /// Log files the process writes itself, shown after what it printed.
    files: Vec<PathBuf>,
    /// Where the current run's output starts: the length of `logs` and of each of `files` when
    /// it was spawned.
    run_start: (usize, Vec<u64>),
    readers: Vec<JoinHandle<()>>,
}

impl Peer {
    /// A peer called `name` (used in messages), not running yet.
    pub(crate) fn new(name: &str) -> Peer {
        Peer {
            name: name.to_owned(),
            child: None,
            logs: Arc::new(Mutex::new(String::new())),
            stdout: Arc::new(Mutex::new(String::new())),
            tee: None,
            files: Vec::new(),
            run_start: (0, Vec::new()),
            readers: Vec::new(),
        }
    }

    /// Counts `path`, a log file the process writes itself, as part of its logs.
    pub(crate) fn log_file(mut self, path: &Path) -> Peer {
        self.files.push(path.to_owned());
        self
    }

    /// Also appends every line the process prints to `path`.
    pub(crate) fn tee(mut self, path: &Path) -> Peer {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
        self.tee = Some(Arc::new(Mutex::new(file)));
        self
    }

    /// Starts `command` (stopping the process this peer ran before, if any), with stdin closed
    /// and stdout and stderr captured.
    pub(crate) fn spawn(&mut self, mut command: Command) {
        self.stop();
        self.run_start = (
            self.logs.lock().expect("log buffer").len(),
            self.files
                .iter()
                .map(|f| std::fs::metadata(f).map(|m| m.len()).unwrap_or(0))
                .collect(),
        );
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", self.name));
        let stdout = child.stdout.take().expect("piped stdout");
        let stderr = child.stderr.take().expect("piped stderr");
        self.readers.retain(|reader| !reader.is_finished());
        self.readers.push(self.capture(stdout, true));
        self.readers.push(self.capture(stderr, false));
        self.child = Some(child);
    }

    /// Polls `probe` until it returns `Ok` and returns that value. `Err(PortTaken)` when the
    /// process could not bind its port (it is stopped then); panics, with the peer's logs and
    /// the probe's last answer, when the process exits or is not ready within `timeout`.
    pub(crate) fn wait_ready<T>(
        &mut self,
        timeout: Duration,
        mut probe: impl FnMut(&Peer) -> Result<T, String>,
    ) -> Result<T, PortTaken> {
        let start = Instant::now();
        loop {
            let probed = probe(self);
            let exited = self.wait_exit(Duration::ZERO);
            if self.port_taken() {
                self.stop();
                return Err(PortTaken);
            }
            // A probe may reach another process that holds the port; only an answer while this
            // process runs (and did not fail to bind) counts.
            let last = match (probed, exited) {
                (Ok(value), None) if self.child.is_some() => return Ok(value),
                (Ok(_), _) => "answered, but not by this process".to_owned(),
                (Err(last), _) => last,
            };
            if let Some(status) = exited {
                panic!(
                    "{} exited during start-up ({status}); last probe: {last}\nlogs:\n{}",
                    self.name,
                    self.logs()
                );
            }
            assert!(self.child.is_some(), "{} was never started", self.name);
            if start.elapsed() > timeout {
                panic!(
                    "{} not ready after {timeout:?}; last probe: {last}\nlogs:\n{}",
                    self.name,
                    self.logs()
                );
            }
            std::thread::sleep(POLL);
        }
    }

    /// Like [`Peer::wait_ready`] for a port that cannot change (other peers know it): a taken
    /// port ends the test, saying so.
    pub(crate) fn ready<T>(
        &mut self,
        timeout: Duration,
        probe: impl FnMut(&Peer) -> Result<T, String>,
    ) -> T {
        self.wait_ready(timeout, probe).unwrap_or_else(|PortTaken| {
            panic!(
                "{} could not bind its port: another process took it (its port was fixed \
                 before start, so it cannot move)\nlogs:\n{}",
                self.name,
                self.logs()
            )
        })
    }

    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    /// The PID of the running process; `None` before `spawn` and after `stop` or an exit.
    pub(crate) fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Everything the process printed so far (all runs), then its own log files.
    pub(crate) fn logs(&self) -> String {
        let mut logs = self.logs.lock().expect("log buffer").clone();
        for file in &self.files {
            logs.push_str(&std::fs::read_to_string(file).unwrap_or_default());
        }
        logs
    }

    /// What the process printed on stdout alone.
    pub(crate) fn stdout(&self) -> String {
        self.stdout.lock().expect("stdout buffer").clone()
    }

    /// What the current run (since the last `spawn`) printed, then wrote to its log files.
    pub(crate) fn run_logs(&self) -> String {
        let mut run = self.logs.lock().expect("log buffer")[self.run_start.0..].to_owned();
        for (file, from) in self.files.iter().zip(&self.run_start.1) {
            let text = std::fs::read(file).unwrap_or_default();
            run.push_str(&String::from_utf8_lossy(
                text.get(*from as usize..).unwrap_or_default(),
            ));
        }
        run
    }

    /// True when the current run's logs say it could not bind a port another process holds.
    pub(crate) fn port_taken(&self) -> bool {
        let run = self.run_logs().to_ascii_lowercase();
        run.contains("address already in use") || run.contains("eaddrinuse")
    }

    /// Sends `signal` (`"STOP"`, `"CONT"`, `"TERM"`, ...) to the process, by its PID.
    pub(crate) fn signal(&self, signal: &str) {
        let pid = self
            .pid()
            .unwrap_or_else(|| panic!("{} is not running", self.name));
        super::send_signal(pid, signal);
    }

    /// Freezes the process (SIGSTOP): connections are accepted by the kernel, never answered.
    pub(crate) fn pause(&self) {
        self.signal("STOP");
    }

    /// Thaws a paused process (SIGCONT).
    pub(crate) fn resume(&self) {
        self.signal("CONT");
    }

    /// Waits up to `timeout` for the process to exit on its own; `None` while it still runs.
    /// Once it has exited, what it printed last is in the logs.
    pub(crate) fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let start = Instant::now();
        loop {
            let child = self.child.as_mut()?;
            if let Some(status) = child.try_wait().expect("wait for a peer") {
                self.child = None;
                self.drain();
                return Some(status);
            }
            if start.elapsed() >= timeout {
                return None;
            }
            std::thread::sleep(POLL);
        }
    }

    /// Asks the process to end (SIGTERM) and waits up to `timeout`; returns its exit status,
    /// or kills it and panics when it is still running then.
    pub(crate) fn terminate(&mut self, timeout: Duration) -> ExitStatus {
        self.signal("TERM");
        match self.wait_exit(timeout) {
            Some(status) => status,
            None => {
                self.stop();
                panic!(
                    "{} did not exit within {timeout:?} of SIGTERM\n{}",
                    self.name,
                    self.logs()
                );
            }
        }
    }

    /// Kills the process and the children it started (SIGKILL, each by its PID) and reaps it.
    /// Harmless when it is not running.
    pub(crate) fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        // A paused process must not keep its children (nginx's workers) waiting for it.
        let children = children_of(child.id());
        let _ = child.kill();
        let _ = child.wait();
        for pid in children {
            if Path::new(&format!("/proc/{pid}")).exists() {
                let _ = Command::new("kill")
                    .arg("-KILL")
                    .arg(pid.to_string())
                    .status();
            }
        }
        self.drain();
    }

    /// Gives the capture threads a moment to read what the process wrote before it ended.
    fn drain(&mut self) {
        let start = Instant::now();
        while self.readers.iter().any(|r| !r.is_finished())
            && start.elapsed() < Duration::from_secs(1)
        {
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Appends every line of `pipe` to the logs (and to stdout's buffer and the tee file), on
    /// a thread that ends with the pipe.
    fn capture(&self, pipe: impl Read + Send + 'static, is_stdout: bool) -> JoinHandle<()> {
        let logs = Arc::clone(&self.logs);
        let stdout = is_stdout.then(|| Arc::clone(&self.stdout));
        let tee = self.tee.clone();
        std::thread::spawn(move || {
            let mut reader = BufReader::new(pipe);
            let mut line = Vec::new();
            while reader.read_until(b'\n', &mut line).unwrap_or(0) > 0 {
                let text = String::from_utf8_lossy(&line);
                let text = text.trim_end_matches('\n');
                for buffer in std::iter::once(&logs).chain(stdout.as_ref()) {
                    let mut buffer = buffer.lock().expect("log buffer");
                    buffer.push_str(text);
                    buffer.push('\n');
                }
                if let Some(file) = &tee {
                    let _ = file.lock().expect("tee file").write_all(&line);
                }
                line.clear();
            }
        })
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        self.stop();
        // A failing test's own message rarely shows what its peers saw; print their last lines.
        if std::thread::panicking() {
            let logs = self.logs();
            let lines: Vec<&str> = logs.lines().collect();
            let tail = &lines[lines.len().saturating_sub(LOG_TAIL_LINES)..];
            eprintln!(
                "----- {} logs (last {} lines) -----\n{}\n----- end of {} logs -----",
                self.name,
                tail.len(),
                tail.join("\n"),
                self.name
            );
        }
    }
}

/// Runs `attempt` (which picks fresh ports each time) until it starts a peer whose port was not
/// taken by another process in between; panics after a few attempts.
pub(crate) fn retry_on_taken_port<T>(
    what: &str,
    mut attempt: impl FnMut() -> Result<T, PortTaken>,
) -> T {
    for _ in 0..PORT_ATTEMPTS {
        if let Ok(started) = attempt() {
            return started;
        }
    }
    panic!("{what}: every one of {PORT_ATTEMPTS} free ports was taken before it could bind it");
}

/// The PIDs whose parent is `pid` (from /proc).
fn children_of(pid: u32) -> Vec<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}
