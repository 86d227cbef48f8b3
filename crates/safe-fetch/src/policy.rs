//! What the fetcher is allowed to do.

use std::net::SocketAddr;
use std::time::Duration;

/// Limits and exceptions applied to every request of a [`crate::SafeFetcher`].
#[derive(Debug, Clone)]
pub struct FetchPolicy {
    /// Allow plain `http` URLs. Off in production: callers' storage and
    /// webhooks must use TLS. Local development and tests turn it on.
    pub allow_http: bool,
    /// Largest body accepted, whatever Content-Length claims.
    pub max_bytes: u64,
    /// Deadline for the whole exchange: connect, redirects and body.
    pub timeout: Duration,
    /// Deadline for establishing one TCP (and TLS) connection.
    pub connect_timeout: Duration,
    /// Redirects followed by GET fetches; 0 turns every redirect into a
    /// `too_many_redirects` failure. Posts never follow redirects.
    pub max_redirects: usize,
    /// Exact socket addresses (IP and port) that may be reached although
    /// their IP is forbidden, e.g. a loopback server in development or tests.
    /// Empty in production.
    pub allowed_private: Vec<SocketAddr>,
    /// Loopback addresses (127.0.0.0/8, `::1`) reachable on any port, and plain `http`
    /// allowed to them and to `localhost`: a receiver on the developer's own machine. Off in
    /// production.
    pub allow_loopback: bool,
}

impl FetchPolicy {
    /// 25 MB, the largest avatar training archive the service accepts.
    pub const DEFAULT_MAX_BYTES: u64 = 25 * 1024 * 1024;

    /// True when `addr` is listed in [`FetchPolicy::allowed_private`], or is a loopback
    /// address and [`FetchPolicy::allow_loopback`] is on.
    pub fn is_excepted(&self, addr: SocketAddr) -> bool {
        (self.allow_loopback
            && crate::address::forbidden_class(addr.ip())
                == Some(crate::address::ForbiddenClass::Loopback))
            || self
                .allowed_private
                .iter()
                .any(|allowed| allowed.ip() == addr.ip() && allowed.port() == addr.port())
    }
}

impl Default for FetchPolicy {
    fn default() -> Self {
        Self {
            allow_http: false,
            max_bytes: Self::DEFAULT_MAX_BYTES,
            timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(10),
            max_redirects: 5,
            allowed_private: Vec::new(),
            allow_loopback: false,
        }
    }
}
