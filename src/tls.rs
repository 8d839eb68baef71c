//! The TLS listener's material: the server certificate and key (`server.tls_cert_file`,
//! `tls_key_file`) and the CA that client certificates must chain to (`tls_client_ca_file`).
//!
//! Invariants: everything is PEM and checked at config load, so `check-config` refuses what the
//! listener would refuse, and what every client would (a server certificate without a
//! subjectAltName or not for serverAuth, a client CA that is no CA); the listener offers `h2`
//! and `http/1.1` by ALPN (Traefik's forwardAuth client then speaks HTTP/2 over one
//! connection); with a client CA, a peer presenting a certificate not from it completes no
//! handshake, and a peer presenting none gets no answer but on `/healthz` (the healthcheck's
//! liveness probe); a renewed certificate and key, or a new client CA, on disk are picked up by
//! [`Reloader`] without a restart (checked every [`RELOAD_INTERVAL`]).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use rustls::client::danger::HandshakeSignatureValid;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{
    DigitallySignedStruct, DistinguishedName, RootCertStore, ServerConfig, SignatureScheme,
};
use x509_parser::prelude::{FromDer, X509Certificate};

/// How often the certificate and key files are checked for a renewal.
pub(crate) const RELOAD_INTERVAL: Duration = Duration::from_secs(10);

/// The listener's TLS settings as the config names them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// PEM certificate chain, leaf first (`server.tls_cert_file`).
    pub cert: PathBuf,
    /// PEM private key of the leaf (`server.tls_key_file`).
    pub key: PathBuf,
    /// PEM CA certificates client certificates must chain to (`server.tls_client_ca_file`).
    pub client_ca: Option<PathBuf>,
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Why the listener's certificate, key or client CA cannot be used. Each names the file.
#[derive(Debug, thiserror::Error)]
pub(crate) enum TlsError {
    /// The file cannot be read.
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// A PEM block that does not decode.
    #[error("{}: not a PEM certificate file: {reason}", path.display())]
    NotPem { path: PathBuf, reason: String },
    /// No `CERTIFICATE` block at all (a DER file, or a key given as the certificate).
    #[error("{}: no PEM certificate (`-----BEGIN CERTIFICATE-----`) in it", path.display())]
    NoCertificate { path: PathBuf },
    /// RFC 6125 §6.4.4: clients match the name they dial against the subjectAltName, never the
    /// subject's CN.
    #[error(
        "{}: the certificate has no subjectAltName; clients check the name they dial \
         (e.g. DNS:jacker-gate) against it",
        path.display()
    )]
    NoSubjectAltName { path: PathBuf },
    /// RFC 5280 §4.2.1.12: an extendedKeyUsage without serverAuth is refused by clients.
    #[error(
        "{}: the certificate's extendedKeyUsage does not allow serverAuth; clients refuse it \
         for a server",
        path.display()
    )]
    NotForServerAuth { path: PathBuf },
    /// RFC 5280 §4.2.1.9: a client CA must have basicConstraints CA:TRUE.
    #[error(
        "{}: {subject} is not a CA certificate (basicConstraints CA:TRUE); give the \
         certificate of the CA that issued the clients' certificates",
        path.display()
    )]
    NotACa { path: PathBuf, subject: String },
    /// RFC 5280 §4.2.1.3: a CA's keyUsage, when present, must allow keyCertSign.
    #[error("{}: {subject}'s keyUsage does not allow keyCertSign", path.display())]
    CaCannotSign { path: PathBuf, subject: String },
    /// No private key block.
    #[error("{}: no PEM private key (PKCS#8, PKCS#1 or SEC1) in it: {reason}", path.display())]
    NoKey { path: PathBuf, reason: String },
    /// A key rustls cannot sign with.
    #[error("{}: unusable private key: {reason}", path.display())]
    BadKey { path: PathBuf, reason: String },
    /// The key is not the certificate's.
    #[error(
        "{} and {} do not belong together: the key is not the certificate's",
        cert.display(),
        key.display()
    )]
    Mismatch { cert: PathBuf, key: PathBuf },
    /// A certificate rustls cannot use, e.g. X.509 v1 (`openssl x509 -req` without
    /// `-extfile`).
    #[error(
        "{}: not a usable certificate ({reason}); it must be X.509 v3 with a subjectAltName \
         for the name clients dial",
        path.display()
    )]
    BadCertificate { path: PathBuf, reason: String },
    /// A CA certificate the verifier cannot use.
    #[error("{}: not a usable CA certificate: {reason}", path.display())]
    BadCa { path: PathBuf, reason: String },
    /// rustls refused the settings themselves.
    #[error("TLS settings refused: {0}")]
    Rustls(#[from] rustls::Error),
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_owned(),
        source,
    })
}

/// Reads a PEM certificate chain (leaf first).
fn read_chain(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&read(path)?)
        .collect::<Result<_, _>>()
        .map_err(|e| TlsError::NotPem {
            path: path.to_owned(),
            reason: e.to_string(),
        })?;
    if chain.is_empty() {
        return Err(TlsError::NoCertificate {
            path: path.to_owned(),
        });
    }
    Ok(chain)
}

/// What every TLS client would refuse in a server certificate: no subjectAltName, or an
/// extendedKeyUsage without serverAuth. Other problems are left to rustls.
fn check_server_leaf(path: &Path, der: &CertificateDer<'_>) -> Result<(), TlsError> {
    let Ok((_, cert)) = X509Certificate::from_der(der) else {
        return Ok(());
    };
    let path = path.to_owned();
    if cert.subject_alternative_name().ok().flatten().is_none() {
        return Err(TlsError::NoSubjectAltName { path });
    }
    if let Ok(Some(eku)) = cert.extended_key_usage() {
        if !eku.value.server_auth && !eku.value.any {
            return Err(TlsError::NotForServerAuth { path });
        }
    }
    Ok(())
}

/// A client CA must be a CA: a leaf certificate there would admit no client at all.
fn check_ca(path: &Path, der: &CertificateDer<'_>) -> Result<(), TlsError> {
    let Ok((_, cert)) = X509Certificate::from_der(der) else {
        return Ok(());
    };
    let (path, subject) = (path.to_owned(), cert.subject().to_string());
    if !cert.is_ca() {
        return Err(TlsError::NotACa { path, subject });
    }
    if let Ok(Some(ku)) = cert.key_usage() {
        if !ku.value.key_cert_sign() {
            return Err(TlsError::CaCannotSign { path, subject });
        }
    }
    Ok(())
}

/// Reads the certificate and key and checks that they belong together.
///
/// # Errors
/// Either file unreadable or not PEM, a key rustls cannot use, a key that is not the
/// certificate's, or a certificate clients would refuse for a server.
pub(crate) fn load_certified_key(cert: &Path, key: &Path) -> Result<CertifiedKey, TlsError> {
    let chain = read_chain(cert)?;
    let key_der = PrivateKeyDer::from_pem_slice(&read(key)?).map_err(|e| TlsError::NoKey {
        path: key.to_owned(),
        reason: e.to_string(),
    })?;
    let signing = provider()
        .key_provider
        .load_private_key(key_der)
        .map_err(|e| TlsError::BadKey {
            path: key.to_owned(),
            reason: e.to_string(),
        })?;
    let certified = CertifiedKey::new(chain, signing);
    certified.keys_match().map_err(|e| match e {
        rustls::Error::InconsistentKeys(_) => TlsError::Mismatch {
            cert: cert.to_owned(),
            key: key.to_owned(),
        },
        // Anything else is the certificate itself.
        e => TlsError::BadCertificate {
            path: cert.to_owned(),
            reason: e.to_string(),
        },
    })?;
    check_server_leaf(cert, &certified.cert[0])?;
    Ok(certified)
}

/// The verifier of client certificates, from the CA file.
fn client_verifier(ca: &Path) -> Result<Arc<dyn ClientCertVerifier>, TlsError> {
    let bad_ca = |reason: String| TlsError::BadCa {
        path: ca.to_owned(),
        reason,
    };
    let mut roots = RootCertStore::empty();
    for cert in read_chain(ca)? {
        check_ca(ca, &cert)?;
        roots.add(cert).map_err(|e| bad_ca(e.to_string()))?;
    }
    // A certificate is verified when one is presented; a connection without one is served
    // `/healthz` only (see `Reloader::requires_client_cert`), so that the container's own
    // healthcheck can connect.
    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
        .allow_unauthenticated()
        .build()
        .map_err(|e| bad_ca(e.to_string()))
}

/// Every problem with the files that were given, for `check-config` (empty when the listener
/// can start): the certificate and key as a pair, the client CA on its own.
pub(crate) fn check(
    pair: Option<(&Path, &Path)>,
    client_ca: Option<&Path>,
) -> Vec<(&'static str, TlsError)> {
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

/// Modification times of the files last loaded.
#[derive(Debug, Default)]
struct Stamps {
    pair: Option<(SystemTime, SystemTime)>,
    client_ca: Option<SystemTime>,
}

fn modified(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

/// The certificate and client CA in use, swapped when the files on disk change.
#[derive(Debug)]
pub(crate) struct Reloader {
    files: TlsFiles,
    current: ArcSwap<CertifiedKey>,
    verifier: Option<Arc<ReloadingVerifier>>,
    stamps: std::sync::Mutex<Stamps>,
}

impl Reloader {
    /// Loads the files once. Errors: what [`check`] reports.
    pub(crate) fn new(files: TlsFiles) -> Result<Arc<Self>, TlsError> {
        let current = load_certified_key(&files.cert, &files.key)?;
        let verifier = match &files.client_ca {
            Some(ca) => Some(Arc::new(ReloadingVerifier {
                inner: ArcSwap::from_pointee(client_verifier(ca)?),
            })),
            None => None,
        };
        let stamps = Stamps {
            pair: Self::pair_stamp(&files),
            client_ca: files.client_ca.as_deref().and_then(modified),
        };
        Ok(Arc::new(Self {
            files,
            current: ArcSwap::from_pointee(current),
            verifier,
            stamps: std::sync::Mutex::new(stamps),
        }))
    }

    fn pair_stamp(files: &TlsFiles) -> Option<(SystemTime, SystemTime)> {
        Some((modified(&files.cert)?, modified(&files.key)?))
    }

    /// Loads the files again if any changed. A pair that does not load (half written, or not
    /// matching) keeps the current certificate, and a client CA that does not load keeps the
    /// current one; both are retried at the next check.
    pub(crate) fn reload_if_changed(&self) {
        let mut last = self.stamps.lock().expect("stamp lock");
        let pair = Self::pair_stamp(&self.files);
        if pair.is_some() && pair != last.pair {
            match load_certified_key(&self.files.cert, &self.files.key) {
                Ok(key) => {
                    self.current.store(Arc::new(key));
                    last.pair = pair;
                    tracing::info!(cert = %self.files.cert.display(), "TLS certificate reloaded");
                }
                Err(e) => tracing::warn!(error = %e, "renewed TLS certificate not loaded yet"),
            }
        }
        if let (Some(ca), Some(verifier)) = (&self.files.client_ca, &self.verifier) {
            let stamp = modified(ca);
            if stamp.is_some() && stamp != last.client_ca {
                match client_verifier(ca) {
                    Ok(inner) => {
                        verifier.inner.store(Arc::new(inner));
                        last.client_ca = stamp;
                        tracing::info!(client_ca = %ca.display(), "TLS client CA reloaded");
                    }
                    Err(e) => tracing::warn!(error = %e, "new TLS client CA not loaded yet"),
                }
            }
        }
    }

    /// The rustls configuration of the listener: this certificate, ALPN `h2` then `http/1.1`,
    /// and the client CA when one is configured.
    ///
    /// # Errors
    /// [`TlsError::Rustls`] if the crypto provider offers no safe protocol version.
    pub(crate) fn server_config(self: &Arc<Self>) -> Result<Arc<ServerConfig>, TlsError> {
        let builder = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?;
        let builder = match &self.verifier {
            Some(verifier) => builder.with_client_cert_verifier(verifier.clone()),
            None => builder.with_no_client_auth(),
        };
        let mut config = builder.with_cert_resolver(self.clone());
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }
}

/// The client CA's verifier, swapped by [`Reloader`] when the CA file changes: rustls fixes a
/// listener's verifier when its configuration is built.
#[derive(Debug)]
struct ReloadingVerifier {
    inner: ArcSwap<Arc<dyn ClientCertVerifier>>,
}

impl ClientCertVerifier for ReloadingVerifier {
    fn offer_client_auth(&self) -> bool {
        self.inner.load().offer_client_auth()
    }

    fn client_auth_mandatory(&self) -> bool {
        self.inner.load().client_auth_mandatory()
    }

    /// No CA names in the CertificateRequest: they would have to outlive a reload. Clients
    /// with one certificate (Traefik's `tls.cert`, Prometheus's `cert_file`) send it anyway;
    /// RFC 8446 §4.2.4 makes the list optional.
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.inner
            .load()
            .verify_client_cert(end_entity, intermediates, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.load().verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.load().verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.load().supported_verify_schemes()
    }
}

impl Reloader {
    /// Whether connections must present a client certificate (a client CA is configured).
    /// Without one, a connection is answered on `/healthz` only (the container's own
    /// healthcheck has no client certificate); every other request ends the connection
    /// unanswered.
    pub(crate) fn requires_client_cert(&self) -> bool {
        self.files.client_ca.is_some()
    }
}

impl ResolvesServerCert for Reloader {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}
