//! The OpenID provider client: discovery, the authorization request with PKCE (S256), `state`
//! and `nonce`, the code exchange, and the ID-token checks.
//!
//! Invariants: the ID token's RS256 signature is checked against the provider's JWKS (refetched
//! on an unknown `kid`, at most once a minute) by `openidconnect` — no JWT crypto here; `iss`,
//! `aud`, `azp` (when present), `exp` and `nonce` are checked; every outbound request goes
//! through rustls and never follows redirects; provider errors are values, never panics.

use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use openidconnect::core::{
    CoreAuthenticationFlow, CoreIdTokenVerifier, CoreJsonWebKeySet, CoreJwsSigningAlgorithm,
    CoreProviderMetadata,
};
use openidconnect::{
    AuthorizationCode, ClientId, ClientSecret, CsrfToken, IssuerUrl, Nonce,
    OAuth2TokenResponse as _, PkceCodeChallenge, PkceCodeVerifier, RedirectUrl, Scope,
    TokenResponse as _,
};
use tokio::sync::Mutex;
use tracing::{info, warn};

use crate::config::{Auth, Provider as ProviderKind};

/// Google's two spellings of its issuer.
const GOOGLE_ISSUERS: [&str; 2] = ["https://accounts.google.com", "accounts.google.com"];
/// How often a token with an unknown `kid` may trigger a JWKS refetch.
const JWKS_REFRESH_EVERY: Duration = Duration::from_secs(60);

type Client = openidconnect::core::CoreClient<
    openidconnect::EndpointSet,
    openidconnect::EndpointNotSet,
    openidconnect::EndpointNotSet,
    openidconnect::EndpointNotSet,
    openidconnect::EndpointMaybeSet,
    openidconnect::EndpointMaybeSet,
>;

struct Discovered {
    client: Client,
    jwks: CoreJsonWebKeySet,
    jwks_uri: openidconnect::JsonWebKeySetUrl,
}

/// A login attempt's secrets, to be kept server-side until the callback.
pub(crate) struct Attempt {
    pub(crate) authorize_url: url::Url,
    pub(crate) state: String,
    pub(crate) pkce_verifier: String,
    pub(crate) nonce: String,
}

/// The identity a successful callback yields; the email policy is applied by the caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Identity {
    pub(crate) email: String,
    pub(crate) email_verified: Option<bool>,
    pub(crate) hd: Option<String>,
}

/// Why the OpenID provider did not yield an identity.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ProviderError {
    #[error("the identity provider is unavailable: {0}")]
    ProviderUnavailable(String),
    #[error("the identity provider refused the code: {0}")]
    Exchange(String),
    #[error("the ID token is invalid: {0}")]
    InvalidToken(String),
    #[error("the ID token has no email claim")]
    NoEmail,
}

pub(crate) struct Provider {
    kind: ProviderKind,
    issuer: IssuerUrl,
    client_id: ClientId,
    client_secret: ClientSecret,
    redirect: RedirectUrl,
    http: reqwest::Client,
    discovered: ArcSwapOption<Discovered>,
    refresh: Mutex<Option<Instant>>,
}

/// Why the provider client could not be built.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SetupError {
    /// reqwest could not build the HTTP client (no TLS backend).
    #[error("cannot build the provider's HTTP client: {0}")]
    Client(reqwest::Error),
    /// The issuer or callback URL was refused by openidconnect.
    #[error("bad provider URL: {0}")]
    Url(url::ParseError),
}

impl Provider {
    /// `callback` is `{public_url}/oauth2/callback`. Discovery happens later, in [`Provider::run`].
    ///
    /// # Errors
    /// The HTTP client cannot be built, or the issuer or callback is not a URL openidconnect
    /// takes (the config loader already checked both).
    pub(crate) fn new(auth: &Auth, callback: &str) -> Result<Arc<Self>, SetupError> {
        let kind = auth.provider;
        let issuer = auth.issuer_url.as_str().trim_end_matches('/').to_owned();
        let secret = auth.client_secret.expose().to_owned();
        let http = reqwest::Client::builder()
            .use_rustls_tls()
            // Following redirects from the provider's endpoints would let a compromised
            // endpoint steer our requests (SSRF); openidconnect recommends turning them off.
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_secs(10))
            .connect_timeout(Duration::from_secs(5))
            .user_agent(concat!("jacker-gate/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(SetupError::Client)?;
        Ok(Arc::new(Self {
            kind,
            issuer: IssuerUrl::new(issuer).map_err(SetupError::Url)?,
            client_id: ClientId::new(auth.client_id.clone()),
            client_secret: ClientSecret::new(secret),
            redirect: RedirectUrl::new(callback.to_owned()).map_err(SetupError::Url)?,
            http,
            discovered: ArcSwapOption::empty(),
            refresh: Mutex::new(None),
        }))
    }

    /// Whether `iss` (from the callback, RFC 9207) names this provider.
    pub(crate) fn issuer_matches(&self, iss: &str) -> bool {
        let iss = iss.trim_end_matches('/');
        iss == self.issuer.as_str().trim_end_matches('/')
            || (self.kind == ProviderKind::Google && GOOGLE_ISSUERS.contains(&iss))
    }

    pub(crate) fn ready(&self) -> bool {
        self.discovered.load().is_some()
    }

    async fn discover(&self) -> Result<Arc<Discovered>, ProviderError> {
        let metadata = CoreProviderMetadata::discover_async(self.issuer.clone(), &self.http)
            .await
            .map_err(|e| ProviderError::ProviderUnavailable(crate::error_chain(&e)))?;
        let jwks = metadata.jwks().clone();
        let jwks_uri = metadata.jwks_uri().clone();
        let client = openidconnect::core::CoreClient::from_provider_metadata(
            metadata,
            self.client_id.clone(),
            Some(self.client_secret.clone()),
        )
        .set_redirect_uri(self.redirect.clone());
        let d = Arc::new(Discovered {
            client,
            jwks,
            jwks_uri,
        });
        self.discovered.store(Some(d.clone()));
        Ok(d)
    }

    async fn current(&self) -> Result<Arc<Discovered>, ProviderError> {
        match self.discovered.load_full() {
            Some(d) => Ok(d),
            None => self.discover().await,
        }
    }

    /// Retries discovery in the background until it succeeds, logging once per failure streak.
    pub(crate) async fn run(self: Arc<Self>) {
        let mut failures = 0u32;
        while !self.ready() {
            match self.discover().await {
                Ok(_) => info!(issuer = %self.issuer.as_str(), "identity provider discovered"),
                Err(e) => {
                    if failures == 0 {
                        warn!(error = %e, "identity provider discovery failed; retrying");
                    }
                    failures += 1;
                    tokio::time::sleep(Duration::from_secs(5)).await;
                }
            }
        }
    }

    /// Starts an attempt: the URL to send the browser to and the secrets to keep.
    pub(crate) async fn begin(&self, login_hint: Option<&str>) -> Result<Attempt, ProviderError> {
        let d = self.current().await?;
        let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
        let mut request = d
            .client
            .authorize_url(
                CoreAuthenticationFlow::AuthorizationCode,
                CsrfToken::new_random,
                Nonce::new_random,
            )
            // openidconnect always asks for `openid`; the email is all the gate needs.
            .add_scope(Scope::new("email".to_owned()))
            .set_pkce_challenge(challenge);
        if let Some(hint) = login_hint {
            request = request.add_extra_param("login_hint", hint.to_owned());
        }
        let (url, state, nonce) = request.url();
        Ok(Attempt {
            authorize_url: url,
            state: state.secret().clone(),
            pkce_verifier: verifier.secret().clone(),
            nonce: nonce.secret().clone(),
        })
    }

    /// Exchanges the code and checks the ID token. `state` was already matched by the caller.
    pub(crate) async fn finish(
        &self,
        code: &str,
        pkce_verifier: &str,
        nonce: &str,
    ) -> Result<Identity, ProviderError> {
        let d = self.current().await?;
        let response = d
            .client
            .exchange_code(AuthorizationCode::new(code.to_owned()))
            .map_err(|e| ProviderError::ProviderUnavailable(e.to_string()))?
            .set_pkce_verifier(PkceCodeVerifier::new(pkce_verifier.to_owned()))
            .request_async(&self.http)
            .await
            .map_err(|e| match e {
                // The provider could not be reached or answered garbage: not the user's fault.
                openidconnect::RequestTokenError::Request(_)
                | openidconnect::RequestTokenError::Parse(..) => {
                    ProviderError::ProviderUnavailable(crate::error_chain(&e))
                }
                other => ProviderError::Exchange(crate::error_chain(&other)),
            })?;
        let _ = response.access_token(); // Never stored: the session holds only the email.
        let id_token = response.id_token().ok_or_else(|| {
            ProviderError::InvalidToken("no id_token in the token response".into())
        })?;
        let nonce = Nonce::new(nonce.to_owned());
        let claims = match id_token.claims(&self.verifier(&d.jwks), &nonce) {
            Ok(c) => c.clone(),
            Err(openidconnect::ClaimsVerificationError::SignatureVerification(
                openidconnect::SignatureVerificationError::NoMatchingKey,
            )) => {
                // The provider may have rotated its keys: refetch once (rate-limited), retry.
                let jwks = self.refresh_jwks(&d).await?;
                id_token
                    .claims(&self.verifier(&jwks), &nonce)
                    .map_err(|e| ProviderError::InvalidToken(e.to_string()))?
                    .clone()
            }
            Err(e) => return Err(ProviderError::InvalidToken(e.to_string())),
        };
        let iss = claims.issuer().as_str();
        let iss_ok = iss == self.issuer.as_str()
            || (self.kind == ProviderKind::Google && GOOGLE_ISSUERS.contains(&iss));
        if !iss_ok {
            return Err(ProviderError::InvalidToken(format!(
                "unexpected issuer {iss}"
            )));
        }
        if let Some(azp) = claims.authorized_party() {
            if azp != &self.client_id {
                return Err(ProviderError::InvalidToken("azp is not this client".into()));
            }
        }
        let email = claims
            .email()
            .ok_or(ProviderError::NoEmail)?
            .as_str()
            .to_owned();
        Ok(Identity {
            email,
            email_verified: claims.email_verified(),
            hd: hd_claim(&id_token.to_string()),
        })
    }

    fn verifier<'a>(&self, jwks: &CoreJsonWebKeySet) -> CoreIdTokenVerifier<'a> {
        // A public-client verifier: no HMAC key exists, so an HS256 token "signed" with the
        // provider's public key or the client secret cannot verify; RS256 only.
        CoreIdTokenVerifier::new_public_client(
            self.client_id.clone(),
            self.issuer.clone(),
            jwks.clone(),
        )
        .set_allowed_algs([CoreJwsSigningAlgorithm::RsaSsaPkcs1V15Sha256])
        // Google may write `iss` without the scheme; checked by hand above.
        .require_issuer_match(false)
    }

    async fn refresh_jwks(&self, d: &Discovered) -> Result<CoreJsonWebKeySet, ProviderError> {
        let mut last = self.refresh.lock().await;
        if last.is_some_and(|t| t.elapsed() < JWKS_REFRESH_EVERY) {
            return Err(ProviderError::InvalidToken(
                "no key matches the token's kid".into(),
            ));
        }
        *last = Some(Instant::now());
        let jwks = CoreJsonWebKeySet::fetch_async(&d.jwks_uri, &self.http)
            .await
            .map_err(|e| ProviderError::ProviderUnavailable(crate::error_chain(&e)))?;
        let fresh = Arc::new(Discovered {
            client: d.client.clone(),
            jwks: jwks.clone(),
            jwks_uri: d.jwks_uri.clone(),
        });
        self.discovered.store(Some(fresh));
        Ok(jwks)
    }
}

/// The `hd` claim from the payload of an ID token whose signature has already been verified.
fn hd_claim(compact: &str) -> Option<String> {
    let payload = compact.split('.').nth(1)?;
    let bytes = URL_SAFE_NO_PAD.decode(payload.trim_end_matches('=')).ok()?;
    let value: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    value.get("hd")?.as_str().map(str::to_owned)
}
