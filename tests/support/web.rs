//! A scripted HTTP client that behaves like a browser where the login tests need it to: it keeps
//! cookies as RFC 6265 says (host-only or `Domain`, `Path`, `Max-Age`/`Expires`, `Secure` only
//! over https, ports ignored), never follows a redirect on its own (the test walks each hop and
//! can look at or tamper with it), and sends `Accept: text/html` on navigations.
//!
//! `forward_auth` plays the reverse proxy: it asks the gate's `/auth` (or `/auth-request`) about
//! an original URL, with the `X-Forwarded-*` headers a proxy would set and the cookies this
//! browser would send to that original URL.

use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use url::Url;

/// What a Chromium navigation sends as `Accept`.
pub(crate) const NAVIGATION_ACCEPT: &str =
    "text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,*/*;q=0.8";

/// One stored cookie.
#[derive(Clone, Debug)]
pub(crate) struct Cookie {
    pub(crate) name: String,
    pub(crate) value: String,
    /// The host it was set by (host-only) or the `Domain` attribute without its leading dot.
    pub(crate) domain: String,
    pub(crate) host_only: bool,
    pub(crate) path: String,
    pub(crate) secure: bool,
    pub(crate) http_only: bool,
    pub(crate) same_site: Option<String>,
    /// Seconds since the epoch; `None` for a session cookie.
    pub(crate) expires: Option<i64>,
    /// The `Set-Cookie` line it came from.
    pub(crate) raw: String,
}

impl Cookie {
    fn matches(&self, url: &Url) -> bool {
        let host = url.host_str().unwrap_or_default().to_ascii_lowercase();
        let domain_ok = if self.host_only {
            host == self.domain
        } else {
            host == self.domain || host.ends_with(&format!(".{}", self.domain))
        };
        let path = url.path();
        let path_ok = path == self.path
            || (path.starts_with(&self.path)
                && (self.path.ends_with('/') || path[self.path.len()..].starts_with('/')));
        let secure_ok = !self.secure || url.scheme() == "https";
        domain_ok && path_ok && secure_ok && !self.expired()
    }

    fn expired(&self) -> bool {
        self.expires.is_some_and(|at| at <= now())
    }
}

/// One `Set-Cookie` header, parsed. `None` when it has no `name=`.
pub(crate) fn parse_set_cookie(line: &str, request_url: &Url) -> Option<Cookie> {
    let mut parts = line.split(';');
    let (name, value) = parts.next()?.split_once('=')?;
    let name = name.trim();
    if name.is_empty() {
        return None;
    }
    let host = request_url
        .host_str()
        .unwrap_or_default()
        .to_ascii_lowercase();
    let mut cookie = Cookie {
        name: name.to_owned(),
        value: value.trim().trim_matches('"').to_owned(),
        domain: host.clone(),
        host_only: true,
        path: default_path(request_url),
        secure: false,
        http_only: false,
        same_site: None,
        expires: None,
        raw: line.to_owned(),
    };
    let mut max_age = None;
    for attribute in parts {
        let (key, val) = attribute
            .split_once('=')
            .map_or((attribute.trim(), ""), |(k, v)| (k.trim(), v.trim()));
        match key.to_ascii_lowercase().as_str() {
            "domain" if !val.is_empty() => {
                cookie.domain = val.trim_start_matches('.').to_ascii_lowercase();
                cookie.host_only = false;
            }
            "path" if val.starts_with('/') => cookie.path = val.to_owned(),
            "secure" => cookie.secure = true,
            "httponly" => cookie.http_only = true,
            "samesite" => cookie.same_site = Some(val.to_owned()),
            "max-age" => max_age = val.parse::<i64>().ok(),
            "expires" if cookie.expires.is_none() => cookie.expires = parse_http_date(val),
            _ => {}
        }
    }
    if let Some(seconds) = max_age {
        cookie.expires = Some(if seconds <= 0 { 0 } else { now() + seconds });
    }
    Some(cookie)
}

/// A response, read whole.
#[derive(Clone, Debug)]
pub(crate) struct Response {
    pub(crate) url: Url,
    /// The HTTP version the answer came in.
    pub(crate) version: reqwest::Version,
    pub(crate) status: u16,
    pub(crate) headers: HeaderMap,
    pub(crate) body: String,
}

impl Response {
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// Every value of a header (e.g. several `Set-Cookie`).
    pub(crate) fn header_all(&self, name: &str) -> Vec<String> {
        self.headers
            .get_all(name)
            .iter()
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            .collect()
    }

    /// The raw `Location` header.
    pub(crate) fn location_raw(&self) -> Option<&str> {
        self.header("location")
    }

    /// `Location` resolved against the request URL.
    pub(crate) fn location(&self) -> Option<Url> {
        self.location_raw().and_then(|l| self.url.join(l).ok())
    }

    pub(crate) fn is_redirect(&self) -> bool {
        (300..400).contains(&self.status) && self.location_raw().is_some()
    }

    /// The cookies this response sets, parsed.
    pub(crate) fn set_cookies(&self) -> Vec<Cookie> {
        self.header_all("set-cookie")
            .iter()
            .filter_map(|line| parse_set_cookie(line, &self.url))
            .collect()
    }

    /// The cookie called `name` that this response sets, if any.
    pub(crate) fn set_cookie(&self, name: &str) -> Option<Cookie> {
        self.set_cookies().into_iter().find(|c| c.name == name)
    }

    pub(crate) fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| {
            panic!(
                "{} {} is not JSON ({e}): {:?}",
                self.status, self.url, self.body
            )
        })
    }

    /// One line for assertion messages: status, URL, Location, Set-Cookie names and the body's
    /// start.
    pub(crate) fn describe(&self) -> String {
        let cookies: Vec<String> = self.header_all("set-cookie");
        let mut body = self.body.clone();
        body.truncate(600);
        format!(
            "{} from {} (Location: {:?}; Set-Cookie: {cookies:?}; body: {body:?})",
            self.status,
            self.url,
            self.location_raw()
        )
    }
}

/// A cookie-keeping client that never follows redirects by itself.
pub(crate) struct Browser {
    client: reqwest::Client,
    jar: Mutex<Vec<Cookie>>,
}

impl Default for Browser {
    fn default() -> Self {
        Browser::new()
    }
}

impl Browser {
    pub(crate) fn new() -> Browser {
        Browser::with(|b| b)
    }

    /// A browser that reaches each of `hosts` (e.g. `app.example.test`) on 127.0.0.1 at the
    /// URL's port, connecting from `local` (a loopback address such as 127.0.0.66, so that a
    /// proxy sees a client of its own).
    pub(crate) fn resolving(hosts: &[&str], local: std::net::IpAddr) -> Browser {
        Browser::with(|b| resolve_all(b, hosts).local_address(local))
    }

    /// Like [`Browser::resolving`], speaking HTTP/2 without TLS (prior knowledge, h2c).
    pub(crate) fn resolving_h2(hosts: &[&str], local: std::net::IpAddr) -> Browser {
        Browser::with(|b| {
            resolve_all(b, hosts)
                .local_address(local)
                .http2_prior_knowledge()
        })
    }

    /// A browser on a client configured by `configure` (redirects are never followed).
    pub(crate) fn with(
        configure: impl FnOnce(reqwest::ClientBuilder) -> reqwest::ClientBuilder,
    ) -> Browser {
        let builder = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .timeout(Duration::from_secs(15));
        Browser {
            client: configure(builder).build().expect("build HTTP client"),
            jar: Mutex::new(Vec::new()),
        }
    }

    /// A second browser that starts with a copy of this one's cookies (e.g. to replay them after
    /// this one signed out).
    pub(crate) fn fork(&self) -> Browser {
        Browser {
            // The same client settings (resolved hosts, source address, HTTP version).
            client: self.client.clone(),
            jar: Mutex::new(self.jar.lock().expect("jar").clone()),
        }
    }

    /// Every live cookie.
    pub(crate) fn cookies(&self) -> Vec<Cookie> {
        let mut jar = self.jar.lock().expect("jar");
        jar.retain(|c| !c.expired());
        jar.clone()
    }

    pub(crate) fn cookie(&self, name: &str) -> Option<Cookie> {
        self.cookies().into_iter().find(|c| c.name == name)
    }

    /// The `Cookie` header this browser would send to `url` (empty when none).
    pub(crate) fn cookie_header(&self, url: &str) -> String {
        let url = Url::parse(url).unwrap_or_else(|e| panic!("bad URL {url}: {e}"));
        let jar = self.jar.lock().expect("jar");
        let mut matching: Vec<&Cookie> = jar.iter().filter(|c| c.matches(&url)).collect();
        // Longer paths first, as browsers send them.
        matching.sort_by_key(|c| std::cmp::Reverse(c.path.len()));
        matching
            .iter()
            .map(|c| format!("{}={}", c.name, c.value))
            .collect::<Vec<_>>()
            .join("; ")
    }

    /// Stores `cookie` as if a response had set it (replacing one with the same name, domain and
    /// path).
    pub(crate) fn put_cookie(&self, cookie: Cookie) {
        let mut jar = self.jar.lock().expect("jar");
        jar.retain(|c| {
            !(c.name == cookie.name && c.domain == cookie.domain && c.path == cookie.path)
        });
        if !cookie.expired() {
            jar.push(cookie);
        }
    }

    /// Changes the value of every stored cookie called `name`; panics when there is none.
    pub(crate) fn set_cookie_value(&self, name: &str, value: &str) {
        let mut jar = self.jar.lock().expect("jar");
        let mut found = false;
        for cookie in jar.iter_mut().filter(|c| c.name == name) {
            cookie.value = value.to_owned();
            found = true;
        }
        assert!(found, "no cookie {name} to change; jar: {:?}", *jar);
    }

    /// Forgets the cookies for which `drop` is true.
    pub(crate) fn remove_cookies(&self, drop: impl Fn(&Cookie) -> bool) {
        self.jar.lock().expect("jar").retain(|c| !drop(c));
    }

    pub(crate) fn clear_cookies(&self) {
        self.jar.lock().expect("jar").clear();
    }

    /// A browser navigation: `GET url` with `Accept: text/html...` and the cookies for `url`.
    pub(crate) async fn navigate(&self, url: &str) -> Response {
        self.request(
            reqwest::Method::GET,
            url,
            &[("Accept", NAVIGATION_ACCEPT)],
            None,
        )
        .await
    }

    /// `GET url` with extra headers (no `Accept: text/html` unless given): an API call.
    pub(crate) async fn get(&self, url: &str, headers: &[(&str, &str)]) -> Response {
        self.request(reqwest::Method::GET, url, headers, None).await
    }

    /// Any request: sends the matching cookies (unless `headers` has its own `Cookie`), stores
    /// what the response sets.
    pub(crate) async fn request(
        &self,
        method: reqwest::Method,
        url: &str,
        headers: &[(&str, &str)],
        body: Option<String>,
    ) -> Response {
        let mut with_cookies: Vec<(&str, &str)> = headers.to_vec();
        let cookies = self.cookie_header(url);
        if !cookies.is_empty()
            && !headers
                .iter()
                .any(|(n, _)| n.eq_ignore_ascii_case("cookie"))
        {
            with_cookies.push(("Cookie", &cookies));
        }
        let response = self.send(method, url, &with_cookies, body).await;
        for cookie in response.set_cookies() {
            self.put_cookie(cookie);
        }
        response
    }

    /// Sends a request as it is (no cookies added, none stored).
    pub(crate) async fn send(
        &self,
        method: reqwest::Method,
        url: &str,
        headers: &[(&str, &str)],
        body: Option<String>,
    ) -> Response {
        let parsed = Url::parse(url).unwrap_or_else(|e| panic!("bad URL {url}: {e}"));
        let mut map = HeaderMap::new();
        for (name, value) in headers {
            map.append(
                HeaderName::from_bytes(name.as_bytes()).expect("header name"),
                HeaderValue::from_str(value).expect("header value"),
            );
        }
        let mut request = self
            .client
            .request(method.clone(), parsed.clone())
            .headers(map);
        if let Some(body) = body {
            request = request.body(body);
        }
        let response = request
            .send()
            .await
            .unwrap_or_else(|e| panic!("{method} {url} failed: {e}"));
        let status = response.status().as_u16();
        let version = response.version();
        let headers = response.headers().clone();
        let body = response.text().await.unwrap_or_default();
        Response {
            url: parsed,
            version,
            status,
            headers,
            body,
        }
    }

    /// Follows `response`'s redirects as navigations, at most `max_hops`, stopping before a
    /// `Location` for which `stop` is true. Returns every response seen (the given one first) and
    /// the `Location` it stopped at.
    pub(crate) async fn follow(
        &self,
        response: Response,
        max_hops: usize,
        stop: impl Fn(&Url) -> bool,
    ) -> (Vec<Response>, Option<Url>) {
        let mut chain = vec![response];
        for _ in 0..max_hops {
            let last = chain.last().expect("chain");
            let Some(next) = last.is_redirect().then(|| last.location()).flatten() else {
                return (chain, None);
            };
            if stop(&next) {
                return (chain, Some(next));
            }
            let response = self.navigate(next.as_str()).await;
            chain.push(response);
        }
        let trail: Vec<String> = chain.iter().map(Response::describe).collect();
        panic!("more than {max_hops} redirects:\n{}", trail.join("\n"));
    }

    /// Asks the gate about `original` as a reverse proxy would: `GET {endpoint}` (the gate's
    /// `/auth` or `/auth-request` URL) with `X-Forwarded-Method/-Proto/-Host/-Uri/-For` taken from
    /// `original` and `client_ip`, and the cookies this browser sends to `original`. `navigation`
    /// adds a browser's `Accept: text/html`. The gate's `Set-Cookie` are stored for `original`'s
    /// host, as a proxy passes them on.
    pub(crate) async fn forward_auth(
        &self,
        endpoint: &str,
        method: &str,
        original: &str,
        navigation: bool,
        extra: &[(&str, &str)],
    ) -> Response {
        let url = Url::parse(original).unwrap_or_else(|e| panic!("bad URL {original}: {e}"));
        let host = match url.port() {
            Some(port) => format!("{}:{port}", url.host_str().unwrap_or_default()),
            None => url.host_str().unwrap_or_default().to_owned(),
        };
        let uri = match url.query() {
            Some(query) => format!("{}?{query}", url.path()),
            None => url.path().to_owned(),
        };
        let mut headers: Vec<(&str, &str)> = vec![
            ("X-Forwarded-Method", method),
            ("X-Forwarded-Proto", url.scheme()),
            ("X-Forwarded-Host", &host),
            ("X-Forwarded-Uri", &uri),
            ("X-Forwarded-For", "192.0.2.10"),
        ];
        if navigation {
            headers.push(("Accept", NAVIGATION_ACCEPT));
        }
        let cookies = self.cookie_header(original);
        if !cookies.is_empty() {
            headers.push(("Cookie", &cookies));
        }
        headers.extend_from_slice(extra);
        let mut response = self
            .send(reqwest::Method::GET, endpoint, &headers, None)
            .await;
        // The proxy hands the answer to the browser as if it came from `original`.
        response.url = url;
        for cookie in response.set_cookies() {
            self.put_cookie(cookie);
        }
        response
    }
}

fn resolve_all(mut builder: reqwest::ClientBuilder, hosts: &[&str]) -> reqwest::ClientBuilder {
    for host in hosts {
        // Port 0: the URL's own port is used.
        builder = builder.resolve(host, std::net::SocketAddr::from(([127, 0, 0, 1], 0)));
    }
    builder
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or_default()
}

/// The default cookie path: the request path up to, not including, its last `/` ("/" at least).
fn default_path(url: &Url) -> String {
    let path = url.path();
    match path.rfind('/') {
        Some(0) | None => "/".to_owned(),
        Some(i) => path[..i].to_owned(),
    }
}

/// `Sun, 06 Nov 1994 08:49:37 GMT` (also with `-` between the date parts) → seconds since the
/// epoch.
pub(crate) fn parse_http_date(text: &str) -> Option<i64> {
    let text = text.trim();
    let rest = text.split_once(',').map_or(text, |(_, r)| r).trim();
    let parts: Vec<&str> = rest.split([' ', '-']).filter(|p| !p.is_empty()).collect();
    let [day, month, year, time, ..] = parts.as_slice() else {
        return None;
    };
    let day: i64 = day.parse().ok()?;
    let month = [
        "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
    ]
    .iter()
    .position(|m| month.to_ascii_lowercase().starts_with(m))? as i64
        + 1;
    let mut year: i64 = year.parse().ok()?;
    if year < 100 {
        year += if year < 70 { 2000 } else { 1900 };
    }
    let mut hms = time.split(':').map(|p| p.parse::<i64>().ok());
    let (h, m, s) = (hms.next()??, hms.next()??, hms.next()??);
    // Days from civil (Howard Hinnant's algorithm).
    let y = if month <= 2 { year - 1 } else { year };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(days * 86_400 + h * 3600 + m * 60 + s)
}
