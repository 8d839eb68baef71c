//! Request bodies: every body is read to its end and thrown away before the answer is sent,
//! within a size and a time bound.
//!
//! Invariant: a body never turns an answer into a proxy error (an answer sent while the proxy
//! still writes the body fails it with a broken pipe); past the bounds the answer is 413 or 408
//! and the connection is closed, since the rest of the body is unread.

use std::time::Duration;

use http::{HeaderValue, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Body as RequestBody;

use super::{plain, Body};

/// The most request body the gate reads (and discards) before it answers: Traefik's
/// `forwardBody: true` sends the client's body to `/auth` (up to the middleware's
/// `maxBodySize`), and an answer sent before the body is read makes Traefik fail with a broken
/// pipe (500). A larger body is answered 413 and the connection closed.
pub(crate) const MAX_BODY_BYTES: u64 = 16 * 1024 * 1024;

/// The most request body the other endpoints read: none needs one (a sign-out form is a few
/// bytes).
pub(crate) const MAX_PAGE_BODY_BYTES: u64 = 64 * 1024;

/// How long reading a request body may take before the answer is 408: a slow body holds one
/// of the `max_connections` slots.
const BODY_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a request body was not read to its end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum BodyRefused {
    /// More than the endpoint reads (413).
    TooLarge,
    /// Not finished within [`BODY_READ_TIMEOUT`] (408).
    TooSlow,
    /// The body broke off or was malformed (400).
    Broken,
}

impl BodyRefused {
    /// The answer, after which the connection is closed: the rest of the body is unread.
    pub(super) fn response(self) -> Response<Body> {
        match self {
            BodyRefused::TooLarge => {
                closing(StatusCode::PAYLOAD_TOO_LARGE, "request body too large\n")
            }
            BodyRefused::TooSlow => closing(StatusCode::REQUEST_TIMEOUT, "request body too slow\n"),
            BodyRefused::Broken => closing(StatusCode::BAD_REQUEST, "bad request body\n"),
        }
    }
}

/// Reads and discards a request body: up to `limit` bytes within [`BODY_READ_TIMEOUT`].
pub(super) async fn drain<B: RequestBody>(body: B, limit: u64) -> Result<(), BodyRefused> {
    if body.is_end_stream() {
        return Ok(());
    }
    if body.size_hint().lower() > limit {
        return Err(BodyRefused::TooLarge);
    }
    let mut body = std::pin::pin!(body);
    let read_all = async {
        let mut read: u64 = 0;
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|_| BodyRefused::Broken)?;
            if let Some(data) = frame.data_ref() {
                read += bytes::Buf::remaining(data) as u64;
                if read > limit {
                    return Err(BodyRefused::TooLarge);
                }
            }
        }
        Ok(())
    };
    tokio::time::timeout(BODY_READ_TIMEOUT, read_all)
        .await
        .unwrap_or(Err(BodyRefused::TooSlow))
}

/// A plain answer after which the connection is closed (the rest of the request is unread).
fn closing(status: StatusCode, body: &'static str) -> Response<Body> {
    let mut resp = plain(status, body);
    resp.headers_mut()
        .insert(http::header::CONNECTION, HeaderValue::from_static("close"));
    resp
}
