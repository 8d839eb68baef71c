//! Real reverse proxies in front of the gate and an upstream: Caddy 2.6 (`forward_auth`) and nginx
//! 1.22 (`auth_request`), each with its config, data and temp paths in its own temporary
//! directory, listening on 127.0.0.1 only, stopped by its PID when dropped.
//!
//! The port is the test's (from `reserve_port()`): it is in the site blocks and in the gate's
//! `redirect_domains`, so it cannot move; a port another process took ends the test saying so.
//!
//! The configs are what the README tells users to write, plus what the login needs: `/oauth2/*`
//! goes to the gate itself, and identity headers a client sends are removed before the auth check
//! can add the gate's.

use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use tempfile::TempDir;

use super::login::require_login_binary;
use super::peer::Peer;

const START_TIMEOUT: Duration = Duration::from_secs(15);

/// The headers the gate answers with after a login (README: "Identity headers").
pub(crate) const IDENTITY_HEADERS: [&str; 3] = [
    "X-Auth-Request-Email",
    "X-Auth-Request-User",
    "X-Forwarded-User",
];

/// Which proxy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    Caddy,
    Nginx,
}

pub(crate) struct Proxy {
    /// First, so that the process is stopped before its directory is removed.
    peer: Peer,
    kind: Kind,
    dir: TempDir,
    port: u16,
    config: String,
}

impl Proxy {
    /// Caddy on `port` with these site blocks (the global block, `admin off` and
    /// `auto_https off`, is added here).
    pub(crate) fn caddy(port: u16, sites: &str) -> Proxy {
        let caddy = require_login_binary("caddy");
        let dir = temp_dir("caddy");
        let config = format!(
            "{{\n\tadmin off\n\tauto_https off\n\tlog {{\n\t\toutput stderr\n\t\tlevel WARN\n\t}}\n}}\n\n{sites}\n"
        );
        let path = dir.path().join("Caddyfile");
        std::fs::write(&path, &config).expect("write Caddyfile");
        let mut command = Command::new(caddy);
        command
            .args(["run", "--adapter", "caddyfile", "--config"])
            .arg(&path)
            .env("XDG_DATA_HOME", dir.path().join("data"))
            .env("XDG_CONFIG_HOME", dir.path().join("config"))
            .env("HOME", dir.path());
        Proxy::launch(Kind::Caddy, dir, port, config, command)
    }

    /// The standard Caddy front for one app at `http://127.0.0.1:{port}`: `/oauth2/*` to the
    /// gate, everything else through `forward_auth` to `upstream`.
    pub(crate) fn caddy_forward_auth(port: u16, gate: SocketAddr, upstream: SocketAddr) -> Proxy {
        Proxy::caddy(
            port,
            &caddy_site(&format!("http://127.0.0.1:{port}"), gate, upstream),
        )
    }

    /// nginx on `port` with this `http { ... }` content (the server blocks); the main context,
    /// temp paths and logs under its directory are added here.
    pub(crate) fn nginx(port: u16, servers: &str) -> Proxy {
        let nginx = require_login_binary("nginx");
        let dir = temp_dir("nginx");
        let d = dir.path().display().to_string();
        for sub in ["body", "proxy", "fastcgi", "uwsgi", "scgi"] {
            std::fs::create_dir_all(dir.path().join("tmp").join(sub)).expect("nginx temp dir");
        }
        // As root, workers would run as `nobody` and could not use the 0700 temp directory.
        let user = if is_root() { "user root;\n" } else { "" };
        let config = format!(
            r#"{user}worker_processes 1;
pid {d}/nginx.pid;
error_log stderr warn;
daemon off;
events {{
    worker_connections 256;
}}
http {{
    access_log off;
    client_body_temp_path {d}/tmp/body;
    proxy_temp_path {d}/tmp/proxy;
    fastcgi_temp_path {d}/tmp/fastcgi;
    uwsgi_temp_path {d}/tmp/uwsgi;
    scgi_temp_path {d}/tmp/scgi;
{servers}
}}
"#
        );
        let path = dir.path().join("nginx.conf");
        std::fs::write(&path, &config).expect("write nginx.conf");
        let mut command = Command::new(nginx);
        command
            .arg("-p")
            .arg(dir.path())
            .arg("-c")
            .arg(&path)
            .args(["-e", "stderr"]);
        Proxy::launch(Kind::Nginx, dir, port, config, command)
    }

    /// The standard nginx front for one app at `http://127.0.0.1:{port}`: `/oauth2/` to the
    /// gate, everything else through `auth_request` to the gate's `/auth-request` and then to
    /// `upstream`; a 401 redirects to the `Location` the gate gave.
    pub(crate) fn nginx_auth_request(port: u16, gate: SocketAddr, upstream: SocketAddr) -> Proxy {
        Proxy::nginx(port, &nginx_server(port, gate, upstream))
    }

    pub(crate) fn kind(&self) -> Kind {
        self.kind
    }

    /// `http://127.0.0.1:PORT`
    pub(crate) fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub(crate) fn port(&self) -> u16 {
        self.port
    }

    pub(crate) fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    pub(crate) fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The config file it runs with.
    pub(crate) fn config(&self) -> &str {
        &self.config
    }

    /// What it wrote to stdout and stderr.
    pub(crate) fn log(&self) -> String {
        self.peer.logs()
    }

    pub(crate) fn pid(&self) -> Option<u32> {
        self.peer.pid()
    }

    /// Kills it and nginx's worker (SIGKILL, each by its PID).
    pub(crate) fn stop(&mut self) {
        self.peer.stop();
    }

    fn launch(kind: Kind, dir: TempDir, port: u16, config: String, mut command: Command) -> Proxy {
        command.current_dir(dir.path());
        let mut peer = Peer::new(&format!("{kind:?}"));
        peer.spawn(command);
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        peer.ready(START_TIMEOUT, |_| {
            TcpStream::connect_timeout(&addr, Duration::from_millis(200))
                .map(drop)
                .map_err(|e| format!("connect to {addr}: {e}; config:\n{config}"))
        });
        Proxy {
            peer,
            kind,
            dir,
            port,
            config,
        }
    }
}

/// A Caddy site block at `address` (e.g. `http://app.example.test:8443`): `/oauth2/*` proxied to
/// the gate, everything else checked with `forward_auth` and proxied to `upstream`.
///
/// In a `route`, so that it runs in the order written: identity headers the client sent are
/// deleted first, then `forward_auth` copies the gate's, then a header that still holds Caddy's
/// unresolved placeholder is deleted. Caddy before 2.9 sets `{http.reverse_proxy.header.NAME}`
/// literally when the auth answer lacks NAME (a public route), and 2.10 keeps the client's
/// header in that case; this site block is right on both.
pub(crate) fn caddy_site(address: &str, gate: SocketAddr, upstream: SocketAddr) -> String {
    let strip: String = IDENTITY_HEADERS
        .iter()
        .map(|h| format!("\t\t\trequest_header -{h}\n"))
        .collect();
    let unresolved: String = IDENTITY_HEADERS
        .iter()
        .enumerate()
        .map(|(i, h)| {
            format!(
                "\t\t\t@unresolved{i} header_regexp {h} ^\\{{http\\.reverse_proxy\\.header\\.\n\t\t\trequest_header @unresolved{i} -{h}\n"
            )
        })
        .collect();
    format!(
        "{address} {{\n\thandle /oauth2/* {{\n\t\treverse_proxy {gate}\n\t}}\n\thandle {{\n\t\troute {{\n{strip}\t\t\tforward_auth {gate} {{\n\t\t\t\turi /auth\n\t\t\t\tcopy_headers {headers}\n\t\t\t}}\n{unresolved}\t\t\treverse_proxy {upstream}\n\t\t}}\n\t}}\n}}\n",
        headers = IDENTITY_HEADERS.join(" "),
    )
}

/// A Caddy site block at `address` that proxies everything to `target` (e.g. the gate's own
/// `auth.` name).
pub(crate) fn caddy_pass_site(address: &str, target: SocketAddr) -> String {
    format!("{address} {{\n\treverse_proxy {target}\n}}\n")
}

/// An nginx server block on 127.0.0.1:`port` for the README's `auth_request` set-up with login:
/// the subrequest goes to `/auth-request`; a 401 becomes a 302 to the gate's `Location` (with
/// any cookie it set); identity headers are set from the gate's answer only (an empty value
/// removes the client's).
pub(crate) fn nginx_server(port: u16, gate: SocketAddr, upstream: SocketAddr) -> String {
    format!(
        r#"    server {{
        listen 127.0.0.1:{port};
        location = /_gate {{
            internal;
            proxy_pass http://{gate}/auth-request;
            proxy_pass_request_body off;
            proxy_set_header Content-Length "";
            proxy_set_header X-Forwarded-Method $request_method;
            proxy_set_header X-Forwarded-Proto  $scheme;
            proxy_set_header X-Forwarded-Host   $http_host;
            proxy_set_header X-Forwarded-Uri    $request_uri;
            proxy_set_header X-Forwarded-For    $remote_addr;
        }}
        location /oauth2/ {{
            proxy_pass http://{gate};
            proxy_set_header Host               $http_host;
            proxy_set_header X-Forwarded-Proto  $scheme;
            proxy_set_header X-Forwarded-Host   $http_host;
            proxy_set_header X-Forwarded-For    $remote_addr;
        }}
        location / {{
            auth_request /_gate;
            auth_request_set $gate_location $upstream_http_location;
            auth_request_set $gate_cookie   $upstream_http_set_cookie;
            auth_request_set $gate_email    $upstream_http_x_auth_request_email;
            auth_request_set $gate_user     $upstream_http_x_auth_request_user;
            auth_request_set $gate_fwd_user $upstream_http_x_forwarded_user;
            error_page 401 = @login;
            proxy_set_header X-Auth-Request-Email $gate_email;
            proxy_set_header X-Auth-Request-User  $gate_user;
            proxy_set_header X-Forwarded-User     $gate_fwd_user;
            proxy_pass http://{upstream};
        }}
        location @login {{
            add_header Set-Cookie $gate_cookie always;
            return 302 $gate_location;
        }}
    }}
"#
    )
}

fn temp_dir(kind: &str) -> TempDir {
    tempfile::Builder::new()
        .prefix(&format!("jacker-gate-{kind}-"))
        .tempdir()
        .expect("create proxy temp dir")
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|out| String::from_utf8_lossy(&out.stdout).trim() == "0")
        .unwrap_or(false)
}
