//! Endpoint ids and the owner/alias rule for status, result and cancel URLs.

use crate::error::FalError;

/// Namespaces whose first segment is not the owner (fal-js `parseEndpointId`).
const NAMESPACES: [&str; 2] = ["workflows", "comfy"];

/// A fal endpoint id such as `fal-ai/flux-pro/v1.1-ultra-finetuned`, split into its parts.
///
/// Submits go to the full id; status, result and cancel URLs use only
/// `{namespace/}{owner}/{alias}` (the subpath is dropped).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointId {
    full: String,
    namespace: Option<String>,
    owner: String,
    alias: String,
}

impl EndpointId {
    /// Parses an endpoint id. A legacy id `123-app` is rewritten to `123/app` as the official
    /// clients do.
    pub fn parse(id: &str) -> Result<Self, FalError> {
        let id = id.trim_matches('/');
        let full = rewrite_legacy_id(id).unwrap_or_else(|| id.to_owned());
        let parts: Vec<&str> = full.split('/').collect();
        if parts.iter().any(|p| p.is_empty()) {
            return Err(FalError::InvalidRequest(format!(
                "invalid fal endpoint id {id:?}"
            )));
        }
        let (namespace, rest) = if NAMESPACES.contains(&parts[0]) {
            (Some(parts[0].to_owned()), &parts[1..])
        } else {
            (None, &parts[..])
        };
        if rest.len() < 2 {
            return Err(FalError::InvalidRequest(format!(
                "fal endpoint id {id:?} needs an owner and an alias"
            )));
        }
        Ok(Self {
            namespace,
            owner: rest[0].to_owned(),
            alias: rest[1].to_owned(),
            full,
        })
    }

    /// The full id, used as the submit path.
    pub fn as_str(&self) -> &str {
        &self.full
    }

    /// `{namespace/}{owner}/{alias}`: the prefix of status, result and cancel paths.
    pub fn app_path(&self) -> String {
        match &self.namespace {
            Some(ns) => format!("{ns}/{}/{}", self.owner, self.alias),
            None => format!("{}/{}", self.owner, self.alias),
        }
    }
}

impl std::fmt::Display for EndpointId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.full)
    }
}

/// `^([0-9]+)-([a-zA-Z0-9-]+)$` becomes `owner/app` (fal-js `ensureEndpointIdFormat`).
fn rewrite_legacy_id(id: &str) -> Option<String> {
    let (owner, app) = id.split_once('-')?;
    let owner_ok = !owner.is_empty() && owner.bytes().all(|b| b.is_ascii_digit());
    let app_ok = !app.is_empty() && app.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
    (owner_ok && app_ok).then(|| format!("{owner}/{app}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subpath_is_dropped_from_app_path() {
        let id = EndpointId::parse("fal-ai/flux-pro/v1.1-ultra-finetuned").unwrap();
        assert_eq!(id.as_str(), "fal-ai/flux-pro/v1.1-ultra-finetuned");
        assert_eq!(id.app_path(), "fal-ai/flux-pro");
    }

    fn app_path(id: &str) -> String {
        EndpointId::parse(id).unwrap().app_path()
    }

    #[test]
    fn namespace_keeps_owner_and_alias_after_it() {
        assert_eq!(
            app_path("workflows/acme/my-flow/extra"),
            "workflows/acme/my-flow"
        );
        assert_eq!(app_path("comfy/acme/graph"), "comfy/acme/graph");
    }

    #[test]
    fn legacy_ids_are_rewritten() {
        let id = EndpointId::parse("1234-my-app").unwrap();
        assert_eq!(id.as_str(), "1234/my-app");
        assert_eq!(id.app_path(), "1234/my-app");
    }

    #[test]
    fn ids_without_alias_are_rejected() {
        assert!(EndpointId::parse("fal-ai").is_err());
        assert!(EndpointId::parse("workflows/acme").is_err());
        assert!(EndpointId::parse("fal-ai//x").is_err());
    }
}
