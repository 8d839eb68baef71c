//! A throw-away certificate authority for one test, made with the `openssl` command line tool
//! (Debian's `openssl` package; `ca-certificates` depends on it): ECDSA P-256 keys, certificates
//! valid for two days, everything in a temporary directory that goes away with the `TestCa`.
//!
//! Also a small HTTPS client for the harness and the tests: it trusts exactly the given CA (no
//! public roots) and can present a client certificate.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use tempfile::TempDir;

use crate::support::require_binary;

/// A certificate and its private key (both PEM), as the gate's `cert_file` / `key_file` and
/// CrowdSec's `cert_file` / `key_file` take them.
#[derive(Clone, Debug)]
pub(crate) struct CertPair {
    pub(crate) cert: PathBuf,
    pub(crate) key: PathBuf,
}

pub(crate) struct TestCa {
    dir: TempDir,
    openssl: PathBuf,
    cert: PathBuf,
    key: PathBuf,
}

impl TestCa {
    /// A new self-signed root CA whose subject is `CN=<common_name>`.
    pub(crate) fn new(common_name: &str) -> TestCa {
        let openssl = require_binary("openssl");
        let dir = tempfile::Builder::new()
            .prefix("jacker-gate-pki-")
            .tempdir()
            .expect("create PKI temp dir");
        let cert = dir.path().join("ca.pem");
        let key = dir.path().join("ca.key");
        let ca = TestCa {
            dir,
            openssl,
            cert,
            key,
        };
        ca.run(&[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-days",
            "2",
            "-subj",
            &format!("/CN={common_name}"),
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
            "-keyout",
            path_str(&ca.key),
            "-out",
            path_str(&ca.cert),
        ]);
        ca
    }

    /// The CA certificate (PEM): what the gate's `ca_file` and CrowdSec's `ca_cert_path` take.
    pub(crate) fn cert(&self) -> &Path {
        &self.cert
    }

    /// A server certificate for `subject_alt_name` (OpenSSL syntax, e.g. `IP:127.0.0.1` or
    /// `DNS:lapi.example.test`), written as `DIR/<name>.pem` and `DIR/<name>.key`.
    pub(crate) fn server_cert(&self, dir: &Path, name: &str, subject_alt_name: &str) -> CertPair {
        self.issue(
            dir,
            name,
            &format!("/CN={name}"),
            &format!(
                "basicConstraints=critical,CA:FALSE\n\
                 keyUsage=critical,digitalSignature\n\
                 extendedKeyUsage=serverAuth\n\
                 subjectAltName={subject_alt_name}\n\
                 subjectKeyIdentifier=hash\n\
                 authorityKeyIdentifier=keyid\n"
            ),
        )
    }

    /// A client certificate with subject `OU=<org_unit>/CN=<common_name>` (no `OU` when
    /// `org_unit` is `None`), written as `DIR/<name>.pem` and `DIR/<name>.key`. CrowdSec 1.4.6
    /// tells bouncers from agents by the `OU` (`bouncers_allowed_ou`, `agents_allowed_ou`) and
    /// names them `<common_name>@<ip>`.
    pub(crate) fn client_cert(
        &self,
        dir: &Path,
        name: &str,
        org_unit: Option<&str>,
        common_name: &str,
    ) -> CertPair {
        let subject = match org_unit {
            Some(ou) => format!("/OU={ou}/CN={common_name}"),
            None => format!("/CN={common_name}"),
        };
        self.issue(
            dir,
            name,
            &subject,
            "basicConstraints=critical,CA:FALSE\n\
             keyUsage=critical,digitalSignature\n\
             extendedKeyUsage=clientAuth\n\
             subjectKeyIdentifier=hash\n\
             authorityKeyIdentifier=keyid\n",
        )
    }

    /// A certificate with subject `CN=<name>` and exactly `extensions` (an `openssl x509
    /// -extfile` text), written as `DIR/<name>.pem` and `DIR/<name>.key`: for certificates a
    /// check must refuse.
    pub(crate) fn cert_with(&self, dir: &Path, name: &str, extensions: &str) -> CertPair {
        self.issue(dir, name, &format!("/CN={name}"), extensions)
    }

    fn issue(&self, dir: &Path, name: &str, subject: &str, extensions: &str) -> CertPair {
        let pair = CertPair {
            cert: dir.join(format!("{name}.pem")),
            key: dir.join(format!("{name}.key")),
        };
        let csr = self.dir.path().join(format!("{name}.csr"));
        let ext = self.dir.path().join(format!("{name}.ext"));
        std::fs::write(&ext, extensions).expect("write certificate extensions");
        self.run(&[
            "req",
            "-new",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-subj",
            subject,
            "-keyout",
            path_str(&pair.key),
            "-out",
            path_str(&csr),
        ]);
        self.run(&[
            "x509",
            "-req",
            "-in",
            path_str(&csr),
            "-CA",
            path_str(&self.cert),
            "-CAkey",
            path_str(&self.key),
            "-set_serial",
            &format!("0x{:016x}", random_u64()),
            "-days",
            "2",
            "-sha256",
            "-extfile",
            path_str(&ext),
            "-out",
            path_str(&pair.cert),
        ]);
        pair
    }

    fn run(&self, args: &[&str]) {
        let output = Command::new(&self.openssl)
            .args(args)
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .output()
            .expect("run openssl");
        assert!(
            output.status.success(),
            "openssl {args:?} failed ({}):\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

/// An HTTPS client builder (rustls) that trusts only `ca` and presents `identity` when given;
/// no proxy, redirects not followed. Add a timeout (and `resolve` overrides) and build.
pub(crate) fn https_client(ca: &Path, identity: Option<&CertPair>) -> reqwest::ClientBuilder {
    let pem = std::fs::read(ca).expect("read CA certificate");
    let mut builder = reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(&pem).expect("CA certificate PEM"))
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy();
    if let Some(pair) = identity {
        let mut pem = std::fs::read(&pair.cert).expect("read client certificate");
        pem.push(b'\n');
        pem.extend(std::fs::read(&pair.key).expect("read client key"));
        builder = builder.identity(reqwest::Identity::from_pem(&pem).expect("client identity PEM"));
    }
    builder
}

/// A `GET` that works where no async runtime runs (start-up polls, `Drop`) or where one does:
/// it runs on its own thread with its own runtime. Pass a client built for this call only (its
/// connections die with that runtime). Returns the status and body, or the error chain.
pub(crate) fn blocking_https_get(
    client: &reqwest::Client,
    url: &str,
) -> Result<(u16, String), String> {
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(|e| e.to_string())?;
                runtime.block_on(async {
                    let response = client.get(url).send().await.map_err(|e| error_chain(&e))?;
                    let status = response.status().as_u16();
                    let body = response.text().await.map_err(|e| error_chain(&e))?;
                    Ok((status, body))
                })
            })
            .join()
            .expect("HTTPS poll thread panicked")
    })
}

/// An error and all its sources, `: `-separated (reqwest hides the TLS reason in a source).
pub(crate) fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

fn path_str(path: &Path) -> &str {
    path.to_str().expect("utf-8 temp path")
}

fn random_u64() -> u64 {
    use std::hash::BuildHasher;
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_nanos();
    // Certificate serial numbers must be positive: keep the top bit clear.
    std::collections::hash_map::RandomState::new().hash_one(nanos) >> 1
}
