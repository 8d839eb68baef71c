//! The gate's HTML pages and redirects, for the login endpoints.
//!
//! Invariant: a page never weighs more than [`MAX_PAGE_BYTES`], whatever address or URL it
//! shows, and every value shown in it is escaped; pages are never cached and load nothing.

use bytes::Bytes;
use http::header::{CACHE_CONTROL, CONTENT_TYPE, LOCATION};
use http::{HeaderValue, Response, StatusCode};
use http_body_util::Full;

use super::{plain, Body};

/// What the gate cannot reach when a login cannot go on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Unreachable {
    /// The OpenID provider.
    Provider,
    /// The session store.
    Store,
}

/// The 503 page of a login that cannot go on for want of a peer.
pub(crate) fn sign_in_unavailable(what: Unreachable) -> Response<Body> {
    let body = match what {
        Unreachable::Provider => {
            "<p>The identity provider cannot be reached right now. Please try again in a minute.</p>"
        }
        Unreachable::Store => {
            "<p>The session store cannot be reached right now. Please try again in a minute.</p>"
        }
    };
    page(
        StatusCode::SERVICE_UNAVAILABLE,
        "Sign-in is unavailable",
        body,
    )
}

/// `s` with the five HTML-special characters escaped, safe in text and quoted attributes.
pub(crate) fn escape_html(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// `/` when no provider is configured: 200 with a page saying that login is off.
pub(crate) fn login_off_page() -> Response<Body> {
    page(
        StatusCode::OK,
        "jacker-gate",
        "<p>Login is off: no identity provider is configured.</p>",
    )
}

/// The most a page of the gate weighs, in bytes. Traefik's forwardAuth reads the answer's body
/// into a buffer of `maxResponseBodySize` bytes allocated for every call, and answers 500 when
/// the body is larger; the deployment sets 4096, twice this bound, so that the buffer stays small
/// and every page fits it, whatever address or URL it shows.
pub const MAX_PAGE_BYTES: usize = 2048;

/// An HTML page with `title` as its title and heading and `body_html` (already escaped) below,
/// never more than [`MAX_PAGE_BYTES`].
pub(crate) fn page(status: StatusCode, title: &str, body_html: &str) -> Response<Body> {
    let render = |body_html: &str| {
        format!(
            "<!doctype html><html><head><meta charset=\"utf-8\"><meta name=\"viewport\" content=\"width=device-width\"><title>{title}</title></head><body><h1>{title}</h1>{body_html}</body></html>\n",
            title = escape_html(title)
        )
    };
    let mut html = render(body_html);
    if html.len() > MAX_PAGE_BYTES {
        // Only a very long configured URL or address gets here: the title alone still says what
        // happened, and the status is unchanged.
        html = render("");
        html.truncate(MAX_PAGE_BYTES);
    }
    let mut resp = Response::new(Full::new(Bytes::from(html)));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    h.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        http::header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("default-src 'none'; style-src 'unsafe-inline'"),
    );
    resp
}

/// A 302 to `location`; a 400 when `location` cannot be a header value.
pub(crate) fn redirect(location: &str) -> Response<Body> {
    let mut resp = plain(StatusCode::FOUND, "");
    match HeaderValue::from_str(location) {
        Ok(v) => {
            resp.headers_mut().insert(LOCATION, v);
            resp
        }
        Err(_) => plain(StatusCode::BAD_REQUEST, "bad request\n"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    async fn body_len(resp: Response<Body>) -> usize {
        resp.into_body().collect().await.unwrap().to_bytes().len()
    }

    #[tokio::test]
    async fn a_page_never_outgrows_the_bound_traefik_reads() {
        for n in [0, 100, 1000, 1900, 2048, 5000, 100_000] {
            // `&` becomes `&amp;`: five times the bytes once escaped.
            let shown = escape_html(&"&".repeat(n));
            let resp = page(StatusCode::OK, "Signed out", &format!("<p>{shown}</p>"));
            assert_eq!(resp.status(), StatusCode::OK);
            assert!(body_len(resp).await <= MAX_PAGE_BYTES, "{n}");
        }
        let resp = page(StatusCode::FORBIDDEN, &"t".repeat(5000), "");
        assert!(body_len(resp).await <= MAX_PAGE_BYTES);
    }

    #[tokio::test]
    async fn a_page_with_the_longest_address_and_a_long_url_is_shown_whole() {
        // RFC 5321 caps an address at 254 bytes; a public URL of 200 bytes is already unusual.
        let email = format!("{}@{}.example", "a".repeat(64), "b".repeat(180));
        let url = format!("https://{}.example.com/oauth2/sign_out", "c".repeat(160));
        let body = format!(
            "<p>Signed in as <b>{}</b>.</p><form method=\"post\" action=\"{}\"><button type=\"submit\">Sign out</button></form>",
            escape_html(&email),
            escape_html(&url)
        );
        let resp = page(StatusCode::OK, "jacker-gate", &body);
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        let html = String::from_utf8_lossy(&bytes);
        assert!(html.contains(&email) && html.contains(&url), "{html}");
    }
}
