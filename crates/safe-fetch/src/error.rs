//! The one error type of the crate.
//!
//! Messages never contain query strings, fragments or userinfo of the URLs
//! involved: signed storage URLs carry their credentials there.

use std::net::IpAddr;

use crate::address::ForbiddenClass;

/// Why a fetch or post was refused or failed. [`FetchError::code`] is stable
/// and suitable for API responses and metrics.
#[derive(Debug, Clone, thiserror::Error)]
pub enum FetchError {
    /// The text is not a URL, or has no host.
    #[error("invalid url: {reason}")]
    InvalidUrl { reason: String },

    /// Only `https` (and `http` when the policy allows it) may be fetched.
    #[error("url scheme `{scheme}` is not allowed")]
    SchemeNotAllowed { scheme: String },

    /// `user:pass@host` URLs are refused: they leak credentials into logs
    /// and are a classic way to disguise the real host.
    #[error("urls with user info are not allowed")]
    UserinfoNotAllowed,

    /// The target (an IP literal or what a name resolved to) is not public.
    #[error("address {address} is not allowed ({class})")]
    ForbiddenAddress {
        address: IpAddr,
        class: ForbiddenClass,
    },

    /// The host name could not be resolved.
    #[error("dns lookup for `{host}` failed: {reason}")]
    DnsFailed { host: String, reason: String },

    /// More redirects than the policy allows (0 means none are allowed).
    #[error("too many redirects (limit {limit})")]
    TooManyRedirects { limit: usize },

    /// A redirect pointed at a URL the policy refuses.
    #[error("redirect to {location} refused: {reason}")]
    RedirectRefused {
        location: String,
        reason: Box<FetchError>,
    },

    /// The body is larger than the policy's `max_bytes`.
    #[error("response body exceeds {limit} bytes")]
    TooLarge { limit: u64 },

    /// The whole request, body included, took longer than the policy allows.
    #[error("request timed out")]
    Timeout,

    /// The server answered with a non-success status.
    #[error("server answered with status {status}")]
    HttpStatus { status: u16 },

    /// No connection could be established to an allowed address.
    #[error("connection failed: {reason}")]
    ConnectFailed { reason: String },

    /// Any other failure while talking HTTP or writing the body to disk.
    #[error("transport error: {reason}")]
    Transport { reason: String },
}

impl FetchError {
    /// Stable snake_case identifier of the variant.
    pub fn code(&self) -> &'static str {
        match self {
            Self::InvalidUrl { .. } => "invalid_url",
            Self::SchemeNotAllowed { .. } => "scheme_not_allowed",
            Self::UserinfoNotAllowed => "userinfo_not_allowed",
            Self::ForbiddenAddress { .. } => "forbidden_address",
            Self::DnsFailed { .. } => "dns_failed",
            Self::TooManyRedirects { .. } => "too_many_redirects",
            Self::RedirectRefused { .. } => "redirect_refused",
            Self::TooLarge { .. } => "too_large",
            Self::Timeout => "timeout",
            Self::HttpStatus { .. } => "http_status",
            Self::ConnectFailed { .. } => "connect_failed",
            Self::Transport { .. } => "transport",
        }
    }

    pub(crate) fn forbidden(address: IpAddr, class: ForbiddenClass) -> Self {
        Self::ForbiddenAddress { address, class }
    }

    /// Turns a reqwest error into ours. Refusals raised inside reqwest (by
    /// the resolver or the redirect policy) travel as the error's source and
    /// are recovered here unchanged.
    pub(crate) fn from_reqwest(err: reqwest::Error) -> Self {
        if let Some(own) = take_own_error(&err) {
            return own;
        }
        // Strip the URL: reqwest's Display would print its query string.
        let err = err.without_url();
        if err.is_timeout() {
            return Self::Timeout;
        }
        let reason = describe_chain(&err);
        if err.is_connect() {
            Self::ConnectFailed { reason }
        } else {
            Self::Transport { reason }
        }
    }
}

/// A copy of the [`FetchError`] anywhere in the source chain of `err`.
fn take_own_error(err: &(dyn std::error::Error + 'static)) -> Option<FetchError> {
    let mut current: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = current {
        if let Some(own) = e.downcast_ref::<FetchError>() {
            return Some(own.clone());
        }
        current = e.source();
    }
    None
}

/// "outer: inner: innermost", without any URL (the caller strips it).
fn describe_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut parts = vec![err.to_string()];
    let mut current = err.source();
    while let Some(e) = current {
        parts.push(e.to_string());
        current = e.source();
    }
    parts.join(": ")
}
