//! A tiny HTTP/1.x upstream application on a free 127.0.0.1 port: it answers every request with
//! 200 and a JSON echo of what it received (`{"method", "uri", "headers": {lower-case name:
//! [values]}, "body_bytes"}`), so a test behind a proxy sees exactly which identity headers
//! arrived. A WebSocket upgrade is accepted (101) and the connection then echoes its bytes. It keeps
//! every echo for `requests()`, and stops (its thread joined) when dropped.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use serde_json::{json, Map, Value};

/// Bounds the head of one request; more is answered 431.
const MAX_HEAD: usize = 64 * 1024;

pub(crate) struct Upstream {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    seen: Arc<Mutex<Vec<Value>>>,
    thread: Option<JoinHandle<()>>,
}

impl Upstream {
    pub(crate) fn start() -> Upstream {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind upstream");
        let addr = listener.local_addr().expect("upstream addr");
        let stop = Arc::new(AtomicBool::new(false));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let thread = {
            let stop = Arc::clone(&stop);
            let seen = Arc::clone(&seen);
            std::thread::spawn(move || {
                for stream in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let Ok(stream) = stream else { continue };
                    let seen = Arc::clone(&seen);
                    std::thread::spawn(move || serve(stream, &seen));
                }
            })
        };
        Upstream {
            addr,
            stop,
            seen,
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

    pub(crate) fn port(&self) -> u16 {
        self.addr.port()
    }

    /// The echo of every request received so far, oldest first.
    pub(crate) fn requests(&self) -> Vec<Value> {
        self.seen.lock().expect("upstream log").clone()
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so that it sees the flag.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The values of header `name` (any case) in an echo, in the order received.
pub(crate) fn echoed(echo: &Value, name: &str) -> Vec<String> {
    echo["headers"][name.to_ascii_lowercase()]
        .as_array()
        .map(|values| {
            values
                .iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// Answers requests on one connection until the peer closes it or asks to (keep-alive is
/// honoured, since Caddy reuses connections).
fn serve(stream: TcpStream, seen: &Mutex<Vec<Value>>) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(30)));
    let Ok(mut writer) = stream.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(stream);
    loop {
        let mut head_len = 0;
        let mut request_line = String::new();
        match reader.read_line(&mut request_line) {
            Ok(0) | Err(_) => return,
            Ok(n) => head_len += n,
        }
        let mut parts = request_line.split_whitespace();
        let (Some(method), Some(uri), Some(version)) = (parts.next(), parts.next(), parts.next())
        else {
            return;
        };
        let (method, uri, version) = (method.to_owned(), uri.to_owned(), version.to_owned());
        let mut headers: Map<String, Value> = Map::new();
        let mut content_length = 0usize;
        let mut keep_alive = version == "HTTP/1.1";
        loop {
            let mut line = String::new();
            match reader.read_line(&mut line) {
                Ok(0) | Err(_) => return,
                Ok(n) => head_len += n,
            }
            if head_len > MAX_HEAD {
                let _ = writer.write_all(
                    b"HTTP/1.1 431 Request Header Fields Too Large\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                );
                return;
            }
            let line = line.trim_end_matches(['\r', '\n']);
            if line.is_empty() {
                break;
            }
            let Some((name, value)) = line.split_once(':') else {
                continue;
            };
            let name = name.trim().to_ascii_lowercase();
            let value = value.trim().to_owned();
            match name.as_str() {
                "content-length" => content_length = value.parse().unwrap_or(0),
                "connection" if value.eq_ignore_ascii_case("close") => keep_alive = false,
                "connection" if value.eq_ignore_ascii_case("keep-alive") => keep_alive = true,
                _ => {}
            }
            headers
                .entry(name)
                .or_insert_with(|| Value::Array(Vec::new()))
                .as_array_mut()
                .expect("array")
                .push(Value::String(value));
        }
        let wants_websocket = headers
            .get("upgrade")
            .and_then(Value::as_array)
            .is_some_and(|v| {
                v.iter().any(|u| {
                    u.as_str()
                        .is_some_and(|u| u.eq_ignore_ascii_case("websocket"))
                })
            });
        if wants_websocket {
            // Accept the upgrade and echo every byte back: enough to see that the proxy
            // tunnels the connection (the test reads its own bytes back).
            let echo = json!({"method": method, "uri": uri, "headers": headers});
            seen.lock().expect("upstream log").push(echo);
            let _ = writer.write_all(
                b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n",
            );
            let mut buf = [0u8; 4096];
            loop {
                match reader.read(&mut buf) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => {
                        if writer.write_all(&buf[..n]).is_err() {
                            return;
                        }
                    }
                }
            }
        }
        let mut body = vec![0u8; content_length.min(1 << 20)];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        let echo =
            json!({"method": method, "uri": uri, "headers": headers, "body_bytes": body.len()});
        seen.lock().expect("upstream log").push(echo.clone());
        let payload = echo.to_string();
        let response = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nCache-Control: no-store\r\nContent-Length: {}\r\nConnection: {}\r\n\r\n{payload}",
            payload.len(),
            if keep_alive { "keep-alive" } else { "close" }
        );
        if writer.write_all(response.as_bytes()).is_err() || !keep_alive {
            return;
        }
    }
}
