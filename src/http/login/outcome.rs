//! How a login step ends: the [`LoginOutcome`] of `/oauth2/start` and the callback, and the
//! pure parts of the callback's policy (reading its query, judging the identity).
//!
//! Invariant: every way a login step can end is a variant here, and each variant names its
//! `jacker_gate_logins_total` label ([`LoginOutcome::result`]); the answer for each is built in
//! one place, `LoginEndpoints::respond`.

use std::borrow::Cow;

use url::Url;

use super::query_param;
use crate::metrics::{LoginResult, StoreOp};
use crate::oauth::email::{EmailPolicy, EmailVerdict};
use crate::oauth::{Identity, ProviderError};
use crate::session::StoreError;

/// A signed cookie value. Its `Debug` form hides it, so that an outcome printed in a log line
/// or a test failure never holds a cookie someone could present.
pub(crate) struct CookieValue(pub(crate) String);

impl std::fmt::Debug for CookieValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CookieValue(..)")
    }
}

/// Which login step an outcome comes from, for the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LoginStep {
    /// `/oauth2/start`.
    Start,
    /// `/oauth2/callback`.
    Callback,
}

/// Why a callback's `state` cannot be used. Each is `invalid_state` and a 400.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BadState {
    /// `state` or `code` is missing from the callback.
    Incomplete,
    /// The browser brings no binding cookie that verifies.
    NoBinding,
    /// No attempt under this state for this browser: unknown, expired, used, or another
    /// browser's.
    Unknown,
    /// The answer names another issuer (RFC 9207 `iss`): a mix-up attack.
    WrongIssuer,
}

/// How one login step ended. `LoginEndpoints::respond` is the one place that turns it into a
/// response, a log line and a `jacker_gate_logins_total` count ([`LoginOutcome::result`]).
#[derive(Debug)]
pub(crate) enum LoginOutcome {
    /// `/oauth2/start` stored the attempt: off to the provider with the binding cookie (a
    /// signed value). Not counted: the callback counts the attempt.
    Started {
        /// The provider's authorization URL for this attempt.
        authorize_url: Url,
        /// The signed binding-cookie value.
        binding_cookie: CookieValue,
    },
    /// The callback created a session: back to `return_url` with the session cookie (a signed
    /// value).
    SignedIn {
        /// The lower-case address the session was created for.
        email: String,
        /// The signed session-cookie value.
        session_cookie: CookieValue,
        /// Where the browser goes now (checked at the start).
        return_url: String,
    },
    /// The provider answered the callback with an `error` parameter (the user cancelled, or
    /// the provider refused), as received.
    ProviderDeclined(String),
    /// The provider's answer did not verify: the code exchange or the ID token failed.
    ProviderRejected(ProviderError),
    /// The provider could not be reached.
    ProviderUnavailable(LoginStep, ProviderError),
    /// The callback's `state` cannot be used.
    InvalidState(BadState),
    /// The provider does not vouch for the address.
    Unverified,
    /// The email policy refuses the account.
    DeniedEmail,
    /// The session store failed at `op`.
    StoreFailed(StoreOp, StoreError),
}

impl LoginOutcome {
    /// The `result` label this outcome is counted under; `None` for a start that went well,
    /// since the attempt is counted when it ends.
    pub(crate) fn result(&self) -> Option<LoginResult> {
        Some(match self {
            LoginOutcome::Started { .. } => return None,
            LoginOutcome::SignedIn { .. } => LoginResult::Success,
            LoginOutcome::ProviderDeclined(_)
            | LoginOutcome::ProviderRejected(_)
            | LoginOutcome::ProviderUnavailable(..) => LoginResult::ProviderError,
            LoginOutcome::InvalidState(_) => LoginResult::InvalidState,
            LoginOutcome::Unverified => LoginResult::Unverified,
            LoginOutcome::DeniedEmail => LoginResult::DeniedEmail,
            LoginOutcome::StoreFailed(..) => LoginResult::StoreError,
        })
    }
}

/// The callback's query parameters.
pub(crate) struct CallbackQuery<'q> {
    /// `state`: names the attempt.
    pub(crate) state: Cow<'q, str>,
    /// `code`: the authorization code to exchange.
    pub(crate) code: Cow<'q, str>,
    /// `iss` (RFC 9207), when the provider sends it.
    pub(crate) iss: Option<Cow<'q, str>>,
}

impl<'q> CallbackQuery<'q> {
    /// The parameters of a callback the provider let through, or the outcome that ends it.
    pub(crate) fn parse(query: &'q str) -> Result<Self, LoginOutcome> {
        if let Some(error) = query_param(query, "error") {
            return Err(LoginOutcome::ProviderDeclined(error.into_owned()));
        }
        match (query_param(query, "state"), query_param(query, "code")) {
            (Some(state), Some(code)) => Ok(Self {
                state,
                code,
                iss: query_param(query, "iss"),
            }),
            _ => Err(LoginOutcome::InvalidState(BadState::Incomplete)),
        }
    }
}

/// The email policy on a verified identity: the lower-case address a session is created for,
/// or the outcome that refuses it.
pub(crate) fn admit_identity(
    emails: &EmailPolicy,
    identity: &Identity,
) -> Result<String, LoginOutcome> {
    match emails.check(
        &identity.email,
        identity.email_verified,
        identity.hd.as_deref(),
    ) {
        EmailVerdict::Allowed => Ok(identity.email.to_ascii_lowercase()),
        EmailVerdict::Unverified => Err(LoginOutcome::Unverified),
        EmailVerdict::Denied => Err(LoginOutcome::DeniedEmail),
    }
}
