//! The fetcher: reqwest clients wired to the guarded resolver and a redirect
//! policy that re-checks every hop.

use std::path::Path;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use reqwest::header::{HeaderMap, CONTENT_TYPE};
use reqwest::{redirect, Client, Response, StatusCode};
use tokio::io::AsyncWriteExt;
use url::Url;

use crate::error::FetchError;
use crate::policy::FetchPolicy;
use crate::resolver::{
    normalize_name, set_current_hop, with_hop, GuardedResolver, NameResolver, SystemResolver,
};
use crate::target::{check_parsed, name_and_port, parse_and_check, redacted};

/// Bytes a fetch to a file gathers before each write (a file's writes run on blocking threads).
const WRITE_BUFFER_BYTES: usize = 256 * 1024;

/// Outcome of a successful GET.
#[derive(Debug, Clone)]
pub struct Fetched {
    /// Body bytes received.
    pub bytes: u64,
    /// The response's Content-Type, if any.
    pub content_type: Option<String>,
    /// URL of the response after redirects.
    pub final_url: Url,
}

/// Outcome of a POST, whatever its status: webhook delivery decides itself
/// what counts as delivered.
#[derive(Debug, Clone)]
pub struct SafeResponse {
    pub status: StatusCode,
    pub headers: HeaderMap,
    /// At most [`SafeResponse::SNIPPET_LIMIT`] bytes of the body, enough to
    /// log why a receiver refused a delivery.
    pub body_snippet: Bytes,
}

impl SafeResponse {
    pub const SNIPPET_LIMIT: usize = 4096;
}

/// HTTP client for URLs supplied by callers. Cheap to clone.
#[derive(Clone)]
pub struct SafeFetcher {
    policy: Arc<FetchPolicy>,
    /// For GETs: follows redirects, checking each hop.
    following: Client,
    /// For POSTs: a 3xx is returned, never followed (a redirected webhook
    /// would otherwise re-send its body to wherever the receiver points).
    not_following: Client,
}

impl std::fmt::Debug for SafeFetcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SafeFetcher")
            .field("policy", &self.policy)
            .finish_non_exhaustive()
    }
}

impl SafeFetcher {
    /// A fetcher using the operating system's resolver.
    pub fn new(policy: FetchPolicy) -> Result<Self, FetchError> {
        Self::with_resolver(policy, Arc::new(SystemResolver))
    }

    /// A fetcher using `resolver` for host names (tests inject a table).
    pub fn with_resolver(
        policy: FetchPolicy,
        resolver: Arc<dyn NameResolver>,
    ) -> Result<Self, FetchError> {
        let policy = Arc::new(policy);
        let following = build_client(&policy, &resolver, hop_checking_policy(&policy))?;
        let not_following = build_client(&policy, &resolver, redirect::Policy::none())?;
        Ok(Self {
            policy,
            following,
            not_following,
        })
    }

    /// The policy this fetcher enforces.
    pub fn policy(&self) -> &FetchPolicy {
        &self.policy
    }

    /// Checks everything about `url` that does not need DNS: syntax,
    /// scheme, userinfo and IP-literal hosts. Meant for validating URLs when
    /// callers register them. Host names are checked again on every request,
    /// against the addresses actually connected to, since DNS answers change.
    pub fn check_url(&self, url: &str) -> Result<Url, FetchError> {
        parse_and_check(url, &self.policy)
    }

    /// Streams the body of a GET to `path` (created or truncated). On any
    /// failure the partial file is removed.
    pub async fn fetch_to_file(&self, url: &str, path: &Path) -> Result<Fetched, FetchError> {
        let url = self.check_url(url)?;
        let mut created = false;
        let outcome = self
            .within_deadline(&url, async {
                let mut response = self.start_get(&url).await?;
                let fetched_head = head_of(&response);
                // Buffered: each write of a file is handed to a blocking thread.
                let mut file = tokio::io::BufWriter::with_capacity(
                    WRITE_BUFFER_BYTES,
                    tokio::fs::File::create(path).await.map_err(io_error)?,
                );
                created = true;
                let mut total: u64 = 0;
                while let Some(chunk) = next_chunk(&mut response).await? {
                    total = self.count_within_limit(total, &chunk)?;
                    file.write_all(&chunk).await.map_err(io_error)?;
                }
                file.flush().await.map_err(io_error)?;
                Ok(Fetched {
                    bytes: total,
                    ..fetched_head
                })
            })
            .await;
        if outcome.is_err() && created {
            // Best effort: a leftover partial file must not look like a download.
            let _ = tokio::fs::remove_file(path).await;
        }
        outcome
    }

    /// GETs a small body into memory (still capped by `max_bytes`).
    pub async fn fetch_bytes(&self, url: &str) -> Result<(Bytes, Fetched), FetchError> {
        let url = self.check_url(url)?;
        self.within_deadline(&url, async {
            let mut response = self.start_get(&url).await?;
            let fetched_head = head_of(&response);
            let mut body = BytesMut::new();
            while let Some(chunk) = next_chunk(&mut response).await? {
                self.count_within_limit(body.len() as u64, &chunk)?;
                body.extend_from_slice(&chunk);
            }
            let fetched = Fetched {
                bytes: body.len() as u64,
                ..fetched_head
            };
            Ok((body.freeze(), fetched))
        })
        .await
    }

    /// POSTs `body` with `headers` (webhook delivery). Any status, 3xx
    /// included, is returned as a response; redirects are never followed.
    pub async fn post(
        &self,
        url: &str,
        headers: HeaderMap,
        body: Bytes,
    ) -> Result<SafeResponse, FetchError> {
        let url = self.check_url(url)?;
        self.within_deadline(&url, async {
            let mut response = self
                .not_following
                .post(url.clone())
                .headers(headers)
                .body(body)
                .send()
                .await
                .map_err(FetchError::from_reqwest)?;
            let status = response.status();
            let headers = response.headers().clone();
            let mut snippet = BytesMut::new();
            while snippet.len() < SafeResponse::SNIPPET_LIMIT {
                let Some(chunk) = next_chunk(&mut response).await? else {
                    break;
                };
                let room = SafeResponse::SNIPPET_LIMIT - snippet.len();
                snippet.extend_from_slice(&chunk[..chunk.len().min(room)]);
            }
            Ok(SafeResponse {
                status,
                headers,
                body_snippet: snippet.freeze(),
            })
        })
        .await
    }

    /// Runs `work` under the policy's total deadline, with the resolver told
    /// which name and port the first hop is for.
    async fn within_deadline<T>(
        &self,
        url: &Url,
        work: impl std::future::Future<Output = Result<T, FetchError>>,
    ) -> Result<T, FetchError> {
        let hop = name_and_port(url).map(|(name, port)| (normalize_name(&name), port));
        let outcome = with_hop(hop, tokio::time::timeout(self.policy.timeout, work)).await;
        let result = outcome.unwrap_or(Err(FetchError::Timeout));
        if let Err(err) = &result {
            tracing::info!(url = %redacted(url), code = err.code(), error = %err, "outbound request failed");
        }
        result
    }

    /// Sends the GET and rejects non-success statuses and bodies announced
    /// as too large.
    async fn start_get(&self, url: &Url) -> Result<Response, FetchError> {
        let response = self
            .following
            .get(url.clone())
            .send()
            .await
            .map_err(FetchError::from_reqwest)?;
        let status = response.status();
        if !status.is_success() {
            return Err(FetchError::HttpStatus {
                status: status.as_u16(),
            });
        }
        if let Some(announced) = response.content_length() {
            if announced > self.policy.max_bytes {
                return Err(FetchError::TooLarge {
                    limit: self.policy.max_bytes,
                });
            }
        }
        Ok(response)
    }

    /// Adds `chunk` to `so_far`, refusing once past `max_bytes`. The header
    /// check alone is not enough: Content-Length may be absent.
    fn count_within_limit(&self, so_far: u64, chunk: &Bytes) -> Result<u64, FetchError> {
        let total = so_far.saturating_add(chunk.len() as u64);
        if total > self.policy.max_bytes {
            return Err(FetchError::TooLarge {
                limit: self.policy.max_bytes,
            });
        }
        Ok(total)
    }
}

fn build_client(
    policy: &Arc<FetchPolicy>,
    lookup: &Arc<dyn NameResolver>,
    redirects: redirect::Policy,
) -> Result<Client, FetchError> {
    let resolver = GuardedResolver {
        lookup: Arc::clone(lookup),
        policy: Arc::clone(policy),
    };
    Client::builder()
        .dns_resolver(Arc::new(resolver))
        // A proxy from the environment would do the connecting (and the
        // resolving) itself, bypassing every address check.
        .no_proxy()
        .redirect(redirects)
        // Do not tell the next hop where we came from (signed URLs).
        .referer(false)
        .https_only(!(policy.allow_http || policy.allow_loopback))
        .connect_timeout(policy.connect_timeout)
        .timeout(policy.timeout)
        .user_agent(concat!("avatars-safe-fetch/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(FetchError::from_reqwest)
}

/// Re-applies the static URL checks to every redirect target and enforces
/// `max_redirects`. Host names in redirect targets are checked by the
/// resolver when reqwest connects to them.
fn hop_checking_policy(policy: &Arc<FetchPolicy>) -> redirect::Policy {
    let policy = Arc::clone(policy);
    redirect::Policy::custom(move |attempt| {
        // `previous` starts with the original URL, so its length is the
        // number of this redirect.
        if attempt.previous().len() > policy.max_redirects {
            let limit = policy.max_redirects;
            return attempt.error(FetchError::TooManyRedirects { limit });
        }
        if let Err(reason) = check_parsed(attempt.url(), &policy) {
            let location = redacted(attempt.url());
            return attempt.error(FetchError::RedirectRefused {
                location,
                reason: Box::new(reason),
            });
        }
        let hop = name_and_port(attempt.url()).map(|(name, port)| (normalize_name(&name), port));
        set_current_hop(hop);
        attempt.follow()
    })
}

fn head_of(response: &Response) -> Fetched {
    Fetched {
        bytes: 0,
        content_type: response
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|value| value.to_str().ok())
            .map(str::to_owned),
        final_url: response.url().clone(),
    }
}

async fn next_chunk(response: &mut Response) -> Result<Option<Bytes>, FetchError> {
    response.chunk().await.map_err(FetchError::from_reqwest)
}

fn io_error(err: std::io::Error) -> FetchError {
    FetchError::Transport {
        reason: err.to_string(),
    }
}
