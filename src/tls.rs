//! The TLS listener's material: the server certificate and key (`server.tls_cert_file`,
//! `tls_key_file`) and the CA that client certificates must chain to (`tls_client_ca_file`).
//!
//! Invariants: everything is PEM and checked at config load, so `check-config` refuses what the
//! listener would refuse; the listener offers `h2` and `http/1.1` by ALPN (Traefik's
//! forwardAuth client then speaks HTTP/2 over one connection); with a client CA, a peer
//! presenting a certificate not from it completes no handshake, and a peer presenting none gets
//! no answer but on `/healthz` (the healthcheck's liveness probe); a renewed certificate and
//! key on disk are picked up by [`Reloader`] without a restart (checked every
//! [`RELOAD_INTERVAL`]).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{RootCertStore, ServerConfig};

/// How often the certificate and key files are checked for a renewal.
pub const RELOAD_INTERVAL: Duration = Duration::from_secs(10);

/// The listener's TLS settings as the config names them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub client_ca: Option<PathBuf>,
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Reads a PEM certificate chain (leaf first).
fn read_chain(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let pem = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{}: not a PEM certificate file: {e}", path.display()))?;
    if chain.is_empty() {
        return Err(format!(
            "{}: no PEM certificate (`-----BEGIN CERTIFICATE-----`) in it",
            path.display()
        ));
    }
    Ok(chain)
}

/// Reads the certificate and key and checks that they belong together.
pub fn load_certified_key(cert: &Path, key: &Path) -> Result<CertifiedKey, String> {
    let chain = read_chain(cert)?;
    let pem = std::fs::read(key).map_err(|e| format!("cannot read {}: {e}", key.display()))?;
    let key_der = PrivateKeyDer::from_pem_slice(&pem).map_err(|e| {
        format!(
            "{}: no PEM private key (PKCS#8, PKCS#1 or SEC1) in it: {e}",
            key.display()
        )
    })?;
    let signing = provider()
        .key_provider
        .load_private_key(key_der)
        .map_err(|e| format!("{}: unusable private key: {e}", key.display()))?;
    let certified = CertifiedKey::new(chain, signing);
    certified.keys_match().map_err(|e| match e {
        rustls::Error::InconsistentKeys(_) => format!(
            "{} and {} do not belong together: {e}",
            cert.display(),
            key.display()
        ),
        // Anything else is the certificate itself, e.g. an X.509 v1 certificate (`openssl
        // x509 -req` without `-extfile`): the listener needs v3 with a subjectAltName.
        e => format!(
            "{}: not a usable certificate ({e}); it must be X.509 v3 with a subjectAltName \
             for the name clients dial",
            cert.display()
        ),
    })?;
    Ok(certified)
}

/// The verifier of client certificates, from the CA file.
fn client_verifier(
    ca: &Path,
) -> Result<Arc<dyn rustls::server::danger::ClientCertVerifier>, String> {
    let mut roots = RootCertStore::empty();
    for cert in read_chain(ca)? {
        roots
            .add(cert)
            .map_err(|e| format!("{}: not a usable CA certificate: {e}", ca.display()))?;
    }
    // A certificate is verified when one is presented; a connection without one is served
    // `/healthz` only (see `Reloader::requires_client_cert`), so that the container's own
    // healthcheck can connect.
    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
        .allow_unauthenticated()
        .build()
        .map_err(|e| format!("{}: {e}", ca.display()))
}

/// Every problem with the files that were given, for `check-config` (empty when the listener
/// can start): the certificate and key as a pair, the client CA on its own.
pub fn check(
    pair: Option<(&Path, &Path)>,
    client_ca: Option<&Path>,
) -> Vec<(&'static str, String)> {
    let mut problems = Vec::new();
    if let Some((cert, key)) = pair {
        if let Err(e) = load_certified_key(cert, key) {
            problems.push(("server.tls_cert_file", e));
        }
    }
    if let Some(ca) = client_ca {
        if let Err(e) = client_verifier(ca) {
            problems.push(("server.tls_client_ca_file", e));
        }
    }
    problems
}

/// The certificate in use, swapped when the files on disk change.
#[derive(Debug)]
pub struct Reloader {
    files: TlsFiles,
    current: ArcSwap<CertifiedKey>,
    stamp: std::sync::Mutex<Option<(SystemTime, SystemTime)>>,
}

impl Reloader {
    pub fn new(files: TlsFiles) -> Result<Arc<Self>, String> {
        let current = load_certified_key(&files.cert, &files.key)?;
        let stamp = Self::stamp_of(&files);
        Ok(Arc::new(Self {
            files,
            current: ArcSwap::from_pointee(current),
            stamp: std::sync::Mutex::new(stamp),
        }))
    }

    fn stamp_of(files: &TlsFiles) -> Option<(SystemTime, SystemTime)> {
        let m = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
        Some((m(&files.cert)?, m(&files.key)?))
    }

    /// Loads the files again if either changed; a pair that does not load (half written, or
    /// not matching) keeps the current certificate and is retried at the next check.
    pub fn reload_if_changed(&self) {
        let stamp = Self::stamp_of(&self.files);
        let mut last = self.stamp.lock().expect("stamp lock");
        if stamp.is_none() || stamp == *last {
            return;
        }
        match load_certified_key(&self.files.cert, &self.files.key) {
            Ok(key) => {
                self.current.store(Arc::new(key));
                *last = stamp;
                tracing::info!(cert = %self.files.cert.display(), "TLS certificate reloaded");
            }
            Err(e) => tracing::warn!(error = %e, "renewed TLS certificate not loaded yet"),
        }
    }

    /// The rustls configuration of the listener: this certificate, ALPN `h2` then `http/1.1`,
    /// and the client CA when one is configured.
    pub fn server_config(self: &Arc<Self>) -> Result<Arc<ServerConfig>, String> {
        let builder = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?;
        let builder = match &self.files.client_ca {
            Some(ca) => builder.with_client_cert_verifier(client_verifier(ca)?),
            None => builder.with_no_client_auth(),
        };
        let mut config = builder.with_cert_resolver(self.clone());
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }
}

impl Reloader {
    /// Whether connections must present a client certificate (a client CA is configured).
    /// Without one, a connection is answered on `/healthz` only (the container's own
    /// healthcheck has no client certificate); every other request ends the connection
    /// unanswered.
    pub fn requires_client_cert(&self) -> bool {
        self.files.client_ca.is_some()
    }
}

impl ResolvesServerCert for Reloader {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}
