//! Name resolution that refuses forbidden addresses.
//!
//! reqwest hands every host name to [`GuardedResolver`], and connects only to
//! the addresses it returns. Checking here, rather than resolving once to
//! validate and letting reqwest resolve again to connect, means the address
//! that was checked is the address connected to: a DNS answer that changes
//! between the two (rebinding) cannot slip through.
//!
//! Rule: forbidden addresses are dropped from the answer and only the
//! remaining ones are handed to the connector; if none remain the lookup
//! fails with `forbidden_address`. Dropping (rather than refusing the whole
//! answer when any address is forbidden) is safe because a dropped address
//! can never be connected to.

use std::future::Future;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use reqwest::dns::{Addrs, Name, Resolve, Resolving};

use crate::address::forbidden_class;
use crate::error::FetchError;
use crate::policy::FetchPolicy;

/// Future returned by [`NameResolver::resolve`].
pub type ResolveFuture = Pin<Box<dyn Future<Output = io::Result<Vec<IpAddr>>> + Send>>;

/// Turns a host name into IP addresses. The fetcher filters whatever this
/// returns; implementations need not (and should not) filter themselves.
/// Tests inject a fixed table so no real DNS is involved.
pub trait NameResolver: Send + Sync {
    fn resolve(&self, host: &str) -> ResolveFuture;
}

/// The operating system's resolver, through tokio.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemResolver;

impl NameResolver for SystemResolver {
    fn resolve(&self, host: &str) -> ResolveFuture {
        let host = host.to_owned();
        Box::pin(async move {
            let addrs = tokio::net::lookup_host((host.as_str(), 0)).await?;
            Ok(addrs.map(|addr| addr.ip()).collect())
        })
    }
}

/// Name and port of the hop currently being requested, so that exceptions in
/// [`FetchPolicy::allowed_private`] (which are IP *and* port) can be matched
/// for names too. reqwest only tells the resolver the name; the fetcher sets
/// this for the first request and the redirect policy updates it per hop.
pub(crate) type HopTarget = Arc<Mutex<Option<(String, u16)>>>;

tokio::task_local! {
    static CURRENT_HOP: HopTarget;
}

/// Runs `fut` with `target` as the hop the resolver matches exceptions for.
pub(crate) async fn with_hop<F: Future>(target: Option<(String, u16)>, fut: F) -> F::Output {
    CURRENT_HOP.scope(Arc::new(Mutex::new(target)), fut).await
}

/// Called by the redirect policy before reqwest requests the next hop.
pub(crate) fn set_current_hop(target: Option<(String, u16)>) {
    let _ = CURRENT_HOP.try_with(|hop| {
        *hop.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) = target;
    });
}

/// Port of the current hop if it is for `host`. Without a matching hop no
/// exception applies (fail closed).
fn current_port_for(host: &str) -> Option<u16> {
    CURRENT_HOP
        .try_with(|hop| {
            let guard = hop.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            match guard.as_ref() {
                Some((name, port)) if name == host => Some(*port),
                _ => None,
            }
        })
        .ok()
        .flatten()
}

/// Lower case, without the trailing dot of a fully qualified name.
pub(crate) fn normalize_name(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

/// `localhost` and `*.localhost` always mean this machine (RFC 6761); they
/// are answered here instead of asking DNS, which might say otherwise.
pub(crate) fn is_localhost_name(host: &str) -> bool {
    host == "localhost" || host.ends_with(".localhost")
}

/// The resolver reqwest uses: looks names up, then filters the answer.
pub(crate) struct GuardedResolver {
    pub(crate) lookup: Arc<dyn NameResolver>,
    pub(crate) policy: Arc<FetchPolicy>,
}

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let host = normalize_name(name.as_str());
        // Read the hop synchronously: this call happens inside the fetch's task.
        let port = current_port_for(&host);
        let lookup = Arc::clone(&self.lookup);
        let policy = Arc::clone(&self.policy);
        Box::pin(async move {
            let ips = if is_localhost_name(&host) {
                vec![
                    IpAddr::V4(Ipv4Addr::LOCALHOST),
                    IpAddr::V6(Ipv6Addr::LOCALHOST),
                ]
            } else {
                lookup
                    .resolve(&host)
                    .await
                    .map_err(|e| FetchError::DnsFailed {
                        host: host.clone(),
                        reason: e.to_string(),
                    })?
            };
            let permitted = filter_addresses(&host, &ips, port, &policy)?;
            let addrs: Addrs = Box::new(permitted.into_iter());
            Ok::<_, Box<dyn std::error::Error + Send + Sync>>(addrs)
        })
    }
}

/// Keeps public addresses (port 0: reqwest fills in the URL's port) and
/// excepted ones (with their exact port). Errors if nothing is left.
fn filter_addresses(
    host: &str,
    ips: &[IpAddr],
    port: Option<u16>,
    policy: &FetchPolicy,
) -> Result<Vec<SocketAddr>, FetchError> {
    if ips.is_empty() {
        return Err(FetchError::DnsFailed {
            host: host.to_owned(),
            reason: "no addresses".to_owned(),
        });
    }
    let mut permitted = Vec::with_capacity(ips.len());
    let mut first_refusal = None;
    for &ip in ips {
        match forbidden_class(ip) {
            None => permitted.push(SocketAddr::new(ip, 0)),
            Some(class) => {
                let excepted = port.map(|p| SocketAddr::new(ip, p));
                match excepted {
                    Some(addr) if policy.is_excepted(addr) => permitted.push(addr),
                    _ => {
                        tracing::warn!(%host, address = %ip, %class, "refusing resolved address");
                        first_refusal.get_or_insert(FetchError::forbidden(ip, class));
                    }
                }
            }
        }
    }
    match (permitted.is_empty(), first_refusal) {
        (true, Some(refusal)) => Err(refusal),
        _ => Ok(permitted),
    }
}
