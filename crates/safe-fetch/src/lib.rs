//! Outbound HTTP for URLs that callers hand to the service: their photo
//! storage, bring-your-own training archives and webhook endpoints.
//!
//! Every request is checked so that the service cannot be turned against its
//! own network (SSRF): only http(s) URLs without userinfo, only public
//! addresses (checked on the address actually connected to, for every
//! redirect hop), bounded in size and time. See the crate README for the
//! exact rules.

mod address;
mod error;
mod fetcher;
mod policy;
mod resolver;
mod target;

pub use address::{forbidden_class, is_forbidden, ForbiddenClass};
pub use bytes::Bytes;
pub use error::FetchError;
pub use fetcher::{Fetched, SafeFetcher, SafeResponse};
pub use policy::FetchPolicy;
pub use reqwest::header::HeaderMap;
pub use reqwest::StatusCode;
pub use resolver::{NameResolver, ResolveFuture, SystemResolver};
pub use url::Url;
