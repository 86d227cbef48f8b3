//! Static checks on a URL: everything that can be decided without DNS.
//!
//! Run on the caller's URL and on every redirect target. Host names are
//! checked later, by the resolver, on the addresses actually connected to.

use std::net::{IpAddr, SocketAddr};

use url::{Host, Url};

use crate::address::forbidden_class;
use crate::error::FetchError;
use crate::policy::FetchPolicy;

/// Parses `raw` with the WHATWG URL parser and applies [`check_parsed`].
///
/// The WHATWG parser normalises odd IPv4 spellings (`0x7f000001`,
/// `2130706433`, `0177.0.0.1`, `127.1`) into dotted quads, so they are
/// classified like any other IP literal.
pub(crate) fn parse_and_check(raw: &str, policy: &FetchPolicy) -> Result<Url, FetchError> {
    let url = Url::parse(raw.trim()).map_err(|e| FetchError::InvalidUrl {
        reason: e.to_string(),
    })?;
    check_parsed(&url, policy)?;
    Ok(url)
}

/// Scheme, userinfo and IP-literal checks on an already parsed URL.
pub(crate) fn check_parsed(url: &Url, policy: &FetchPolicy) -> Result<(), FetchError> {
    match url.scheme() {
        "https" => {}
        "http" if policy.allow_http => {}
        "http" if policy.allow_loopback && names_loopback(url) => {}
        other => {
            return Err(FetchError::SchemeNotAllowed {
                scheme: other.to_owned(),
            })
        }
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(FetchError::UserinfoNotAllowed);
    }
    let host = url.host().ok_or_else(|| FetchError::InvalidUrl {
        reason: "url has no host".to_owned(),
    })?;
    let port = url
        .port_or_known_default()
        .ok_or_else(|| FetchError::InvalidUrl {
            reason: "url has no port".to_owned(),
        })?;
    let literal = match host {
        Host::Ipv4(v4) => IpAddr::V4(v4),
        Host::Ipv6(v6) => IpAddr::V6(v6),
        Host::Domain(_) => return Ok(()),
    };
    check_socket_addr(SocketAddr::new(literal, port), policy)
}

/// True when the URL's host is a loopback literal or `localhost` (which resolves to loopback
/// only: any other address it resolves to is still refused by the resolver).
fn names_loopback(url: &Url) -> bool {
    match url.host() {
        Some(Host::Ipv4(v4)) => {
            forbidden_class(IpAddr::V4(v4)) == Some(crate::address::ForbiddenClass::Loopback)
        }
        Some(Host::Ipv6(v6)) => {
            forbidden_class(IpAddr::V6(v6)) == Some(crate::address::ForbiddenClass::Loopback)
        }
        Some(Host::Domain(name)) => {
            crate::resolver::is_localhost_name(&crate::resolver::normalize_name(name))
        }
        None => false,
    }
}

/// Refuses a forbidden address unless the policy lists it as an exception.
pub(crate) fn check_socket_addr(addr: SocketAddr, policy: &FetchPolicy) -> Result<(), FetchError> {
    match forbidden_class(addr.ip()) {
        Some(_) if policy.is_excepted(addr) => Ok(()),
        Some(class) => Err(FetchError::forbidden(addr.ip(), class)),
        None => Ok(()),
    }
}

/// The URL without userinfo, query or fragment, for messages and logs.
pub(crate) fn redacted(url: &Url) -> String {
    let mut shown = format!("{}://{}", url.scheme(), url.host_str().unwrap_or(""));
    if let Some(port) = url.port() {
        shown.push_str(&format!(":{port}"));
    }
    shown.push_str(url.path());
    shown
}

/// Host name and effective port of a URL whose host is a name, as handed
/// to the resolver (lower case, no brackets).
pub(crate) fn name_and_port(url: &Url) -> Option<(String, u16)> {
    match url.host()? {
        Host::Domain(name) => Some((name.to_ascii_lowercase(), url.port_or_known_default()?)),
        _ => None,
    }
}
