//! A misbehaving HTTP peer for the fault tests: a TCP listener on 127.0.0.1 that answers each
//! request with whatever the test's handler says — a well-formed answer, a wrong status, canned
//! bytes, a body cut off before its promised length, a body dribbled slowly, an answer delayed, or
//! nothing at all. Real peers can be stopped and frozen (`Lapi::pause`, `Redis::pause`); this one
//! is for the answers a real peer gives only when something between it and the gate breaks.
//!
//! It runs on a thread of its own with its own runtime, so it keeps answering while the test
//! blocks (starting a gate, sleeping). Every connection is closed after one answer. Dropping it
//! stops the thread and closes every connection it holds.
//!
//! `FakeLapi` builds a CrowdSec LAPI on it: a decision stream (startup and deltas, per bouncer
//! key, in CrowdSec 1.4.6's format) that can be switched to a [`LapiFault`] and back.

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// One request as the fake peer read it (the body, if any, is read and dropped).
#[derive(Clone, Debug)]
pub(crate) struct Seen {
    pub(crate) method: String,
    /// Path and query, as sent.
    pub(crate) target: String,
    pub(crate) headers: Vec<(String, String)>,
    pub(crate) at: Instant,
}

impl Seen {
    /// The first value of header `name` (case-insensitive).
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub(crate) fn path(&self) -> &str {
        self.target.split('?').next().unwrap_or_default()
    }

    /// The value of query parameter `name` (not percent-decoded).
    pub(crate) fn query_param(&self, name: &str) -> Option<&str> {
        let (_, query) = self.target.split_once('?')?;
        query
            .split('&')
            .filter_map(|pair| pair.split_once('='))
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v)
    }
}

/// What the fake peer does with one request.
#[derive(Clone, Debug)]
pub(crate) enum Reply {
    /// A complete answer with a correct `Content-Length`.
    Full {
        status: u16,
        content_type: &'static str,
        body: Vec<u8>,
    },
    /// A head that promises `declared` body bytes (`Content-Length`), then only `body`, then
    /// the connection closes.
    ShortBody { declared: u64, body: Vec<u8> },
    /// `Transfer-Encoding: chunked` with `body` as one chunk, then the connection closes
    /// without the last (zero-length) chunk.
    UnfinishedChunks { body: Vec<u8> },
    /// The head at once (a correct `Content-Length`), then the body `chunk` bytes at a time,
    /// one chunk every `every`.
    Dribble {
        body: Vec<u8>,
        chunk: usize,
        every: Duration,
    },
    /// Waits, then does the inner reply.
    Delayed(Duration, Box<Reply>),
    /// Reads the request and never answers; the connection stays open until the client goes
    /// away or the fake stops.
    Hang,
}

impl Reply {
    /// 200 with a JSON body.
    pub(crate) fn json(body: impl Into<Vec<u8>>) -> Reply {
        Reply::Full {
            status: 200,
            content_type: "application/json",
            body: body.into(),
        }
    }

    pub(crate) fn status(status: u16, body: impl Into<Vec<u8>>) -> Reply {
        Reply::Full {
            status,
            content_type: "application/json",
            body: body.into(),
        }
    }
}

type Handler = Arc<dyn Fn(&Seen) -> Reply + Send + Sync>;

/// The HTTP server; see the module doc.
pub(crate) struct FakePeer {
    addr: SocketAddr,
    handler: Arc<Mutex<Handler>>,
    seen: Arc<Mutex<Vec<Seen>>>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl FakePeer {
    /// Listens on a free 127.0.0.1 port and answers with `handler`.
    pub(crate) fn start(handler: impl Fn(&Seen) -> Reply + Send + Sync + 'static) -> FakePeer {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        listener.set_nonblocking(true).expect("non-blocking");
        let addr = listener.local_addr().expect("local addr");
        let handler: Arc<Mutex<Handler>> = Arc::new(Mutex::new(Arc::new(handler)));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = {
            let handler = handler.clone();
            let seen = seen.clone();
            std::thread::spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("fake peer runtime");
                runtime.block_on(async move {
                    let listener = TcpListener::from_std(listener).expect("tokio listener");
                    let accept = async {
                        loop {
                            let Ok((stream, _)) = listener.accept().await else {
                                continue;
                            };
                            let handler = handler.clone();
                            let seen = seen.clone();
                            tokio::spawn(serve(stream, handler, seen));
                        }
                    };
                    tokio::select! {
                        () = accept => {}
                        _ = stopped => {}
                    }
                });
                // Dropping the runtime cancels every connection task and closes its socket.
            })
        };
        FakePeer {
            addr,
            handler,
            seen,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    /// `http://127.0.0.1:PORT`
    pub(crate) fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub(crate) fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Replaces the handler; requests already being answered finish with the old one.
    pub(crate) fn set_handler(&self, handler: impl Fn(&Seen) -> Reply + Send + Sync + 'static) {
        *self.handler.lock().expect("handler") = Arc::new(handler);
    }

    /// Every request read so far, oldest first.
    pub(crate) fn seen(&self) -> Vec<Seen> {
        self.seen.lock().expect("seen").clone()
    }
}

impl Drop for FakePeer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Reads one request head (and its `Content-Length` body), records it, answers, closes.
async fn serve(mut stream: TcpStream, handler: Arc<Mutex<Handler>>, seen: Arc<Mutex<Vec<Seen>>>) {
    let Some(request) = read_request(&mut stream).await else {
        return;
    };
    seen.lock().expect("seen").push(request.clone());
    let handler = handler.lock().expect("handler").clone();
    let reply = handler(&request);
    let _ = answer(&mut stream, reply).await;
}

async fn read_request(stream: &mut TcpStream) -> Option<Seen> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        if buf.len() > 1 << 20 {
            return None;
        }
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let mut request_line = lines.next()?.split(' ');
    let method = request_line.next()?.to_owned();
    let target = request_line.next()?.to_owned();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_owned(), v.trim().to_owned()))
        .collect();
    let length: usize = headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    let mut body_read = buf.len() - head_end;
    while body_read < length {
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            break;
        }
        body_read += n;
    }
    Some(Seen {
        method,
        target,
        headers,
        at: Instant::now(),
    })
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        403 => "Forbidden",
        404 => "Not Found",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        _ => "Whatever",
    }
}

async fn answer(stream: &mut TcpStream, reply: Reply) -> std::io::Result<()> {
    let mut reply = reply;
    loop {
        match reply {
            Reply::Delayed(wait, inner) => {
                tokio::time::sleep(wait).await;
                reply = *inner;
            }
            Reply::Full {
                status,
                content_type,
                body,
            } => {
                let head = format!(
                    "HTTP/1.1 {status} {}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    reason(status),
                    body.len()
                );
                stream.write_all(head.as_bytes()).await?;
                stream.write_all(&body).await?;
                return stream.shutdown().await;
            }
            Reply::ShortBody { declared, body } => {
                let head = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {declared}\r\nConnection: close\r\n\r\n"
                );
                stream.write_all(head.as_bytes()).await?;
                stream.write_all(&body).await?;
                return stream.shutdown().await;
            }
            Reply::UnfinishedChunks { body } => {
                let head = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n";
                stream.write_all(head.as_bytes()).await?;
                stream
                    .write_all(format!("{:x}\r\n", body.len()).as_bytes())
                    .await?;
                stream.write_all(&body).await?;
                stream.write_all(b"\r\n").await?;
                return stream.shutdown().await;
            }
            Reply::Dribble { body, chunk, every } => {
                let head = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    body.len()
                );
                stream.write_all(head.as_bytes()).await?;
                for piece in body.chunks(chunk.max(1)) {
                    tokio::time::sleep(every).await;
                    stream.write_all(piece).await?;
                }
                return stream.shutdown().await;
            }
            Reply::Hang => {
                // Wait for the client to give up (read returns 0 or fails).
                let mut sink = [0u8; 1024];
                while matches!(stream.read(&mut sink).await, Ok(n) if n > 0) {}
                return Ok(());
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// A CrowdSec LAPI on the fake peer.

/// How the fake LAPI misbehaves on `/v1/decisions/stream`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum LapiFault {
    /// HTTP 500 with a JSON error body, as the LAPI answers when its database fails.
    Status500,
    /// 200 with a body that is not JSON (an HTML error page from something in between).
    Garbage,
    /// 200 with a JSON body cut in the middle of a decision (but a correct `Content-Length`).
    BrokenJson,
    /// 200 with `[]`: JSON, but not the stream object. Must not pass for "no decisions".
    EmptyArray,
    /// 200 promising more bytes than it sends; what it sends is a complete, empty startup
    /// answer, so a client that ignored the missing bytes would wipe its table.
    ShortBody,
    /// The same empty startup answer as one chunk, and no final chunk.
    UnfinishedChunks,
    /// A `Content-Length` above the gate's 256 MiB cap (the body never comes).
    TooLarge,
    /// The right answer, but only after `crowdsec.timeout` has long passed.
    SlowHead(Duration),
    /// The head at once, the body a few bytes at a time, finishing long after the timeout.
    SlowBody(Duration),
}

/// An empty startup answer, as CrowdSec 1.4.6 writes it.
pub(crate) const EMPTY_STREAM: &str = r#"{"new":null,"deleted":null}"#;

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Decision {
    scope: &'static str,
    value: String,
    kind: String,
}

#[derive(Default)]
struct LapiState {
    decisions: BTreeSet<Decision>,
    /// What each bouncer (by API key) was last sent, for deltas.
    sent: HashMap<String, BTreeSet<Decision>>,
    fault: Option<LapiFault>,
    next_id: u64,
}

/// A CrowdSec LAPI stand-in that serves the decision stream like the real one and can be told to
/// misbehave. Decisions last an hour.
pub(crate) struct FakeLapi {
    peer: FakePeer,
    state: Arc<Mutex<LapiState>>,
}

impl FakeLapi {
    /// A LAPI with no decisions that answers correctly.
    pub(crate) fn start() -> FakeLapi {
        let state: Arc<Mutex<LapiState>> = Arc::default();
        let peer = {
            let state = state.clone();
            FakePeer::start(move |request| lapi_answer(&state, request))
        };
        FakeLapi { peer, state }
    }

    pub(crate) fn url(&self) -> String {
        self.peer.url()
    }

    /// Adds a one-hour `ban` on an address; served from the next stream request on.
    pub(crate) fn ban_ip(&self, ip: &str) {
        self.state
            .lock()
            .expect("LAPI state")
            .decisions
            .insert(Decision {
                scope: "Ip",
                value: ip.to_owned(),
                kind: "ban".to_owned(),
            });
    }

    /// From now on every stream request gets `fault` (or, with `None`, the right answer).
    pub(crate) fn set_fault(&self, fault: Option<LapiFault>) {
        self.state.lock().expect("LAPI state").fault = fault;
    }

    /// Every request so far.
    pub(crate) fn seen(&self) -> Vec<Seen> {
        self.peer.seen()
    }
}

fn lapi_answer(state: &Mutex<LapiState>, request: &Seen) -> Reply {
    let mut state = state.lock().expect("LAPI state");
    if request.path() != "/v1/decisions/stream" {
        return Reply::status(404, r#"{"message":"not found"}"#);
    }
    let Some(key) = request.header("x-api-key").map(str::to_owned) else {
        return Reply::status(403, r#"{"message":"access forbidden"}"#);
    };
    let startup = request.query_param("startup") == Some("true");
    let good = stream_body(&mut state, &key, startup);
    match state.fault {
        None => Reply::json(good),
        Some(LapiFault::Status500) => Reply::status(
            500,
            r#"{"message":"unable to query decisions: database is locked"}"#,
        ),
        Some(LapiFault::Garbage) => Reply::Full {
            status: 200,
            content_type: "text/html",
            body: b"<html><body><h1>502 Bad Gateway</h1></body></html>".to_vec(),
        },
        Some(LapiFault::BrokenJson) => Reply::json(
            r#"{"new":[{"duration":"59m59.5s","id":1,"scope":"Ip","type":"ban","value":"198.51.100.99"},{"duration":"#,
        ),
        Some(LapiFault::EmptyArray) => Reply::json("[]"),
        Some(LapiFault::ShortBody) => Reply::ShortBody {
            declared: EMPTY_STREAM.len() as u64 + 4096,
            body: EMPTY_STREAM.as_bytes().to_vec(),
        },
        Some(LapiFault::UnfinishedChunks) => Reply::UnfinishedChunks {
            body: EMPTY_STREAM.as_bytes().to_vec(),
        },
        Some(LapiFault::TooLarge) => Reply::ShortBody {
            declared: 300 << 20,
            body: EMPTY_STREAM.as_bytes().to_vec(),
        },
        Some(LapiFault::SlowHead(wait)) => Reply::Delayed(wait, Box::new(Reply::json(good))),
        Some(LapiFault::SlowBody(total)) => {
            let body = good.into_bytes();
            let every = total / u32::try_from(body.len().max(1)).unwrap_or(u32::MAX);
            Reply::Dribble {
                body,
                chunk: 1,
                every,
            }
        }
    }
}

/// The stream answer for bouncer `key`: everything on startup, else what changed since its last
/// request. A faulty answer still counts as sent, as a real LAPI would (it cannot know the
/// bouncer did not get it); the gate asks for a startup stream after any failure.
fn stream_body(state: &mut LapiState, key: &str, startup: bool) -> String {
    let current = state.decisions.clone();
    let before = state.sent.insert(key.to_owned(), current.clone());
    let (new, deleted): (Vec<Decision>, Vec<Decision>) = if startup {
        (current.iter().cloned().collect(), Vec::new())
    } else {
        let before = before.unwrap_or_default();
        (
            current.difference(&before).cloned().collect(),
            before.difference(&current).cloned().collect(),
        )
    };
    let mut render = |list: &[Decision], duration: &str| -> String {
        if list.is_empty() {
            return "null".to_owned();
        }
        let items: Vec<String> = list
            .iter()
            .map(|d| {
                state.next_id += 1;
                serde_json::json!({
                    "duration": duration,
                    "id": state.next_id,
                    "origin": "cscli",
                    "scenario": "manual 'ban' from 'fake-lapi'",
                    "scope": d.scope,
                    "type": d.kind,
                    "value": d.value,
                    "simulated": false,
                })
                .to_string()
            })
            .collect();
        format!("[{}]", items.join(","))
    };
    let new = render(&new, "59m58.646682607s");
    let deleted = render(&deleted, "-1.5s");
    format!(r#"{{"deleted":{deleted},"new":{new}}}"#)
}
