//! Blob storage for photo bytes and trained artifacts, behind `object_store`: a local directory
//! by default, S3 or any S3-compatible store when `STORAGE_URL` says `s3://bucket/prefix`
//! (endpoint, region, credentials and addressing style from [`S3Options`]).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use futures_util::stream::BoxStream;
use futures_util::StreamExt;
use object_store::buffered::BufWriter;
use object_store::local::LocalFileSystem;
use object_store::path::Path as ObjectPath;
use object_store::{GetResult, GetResultPayload, ObjectStore};
use secrecy::{ExposeSecret, SecretString};
use tokio::io::AsyncWriteExt;
use tokio_util::io::ReaderStream;

/// Bytes moved per read of a local file. Each read of a local file is handed to a blocking
/// thread (tokio and object_store read 8 KiB at a time by default); pieces this large move
/// a photo or an archive in a few hand-offs instead of hundreds, and bound the memory a
/// transfer holds.
pub const FILE_CHUNK_BYTES: usize = 256 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    #[error("blob storage is misconfigured: {0}")]
    Config(String),
    #[error("blob {0} not found")]
    NotFound(String),
    #[error("blob storage failed: {0}")]
    Backend(#[from] object_store::Error),
    #[error("reading or writing a local file: {0}")]
    Io(#[from] std::io::Error),
}

/// How to reach an S3-compatible store. Unset fields fall back to what the AWS environment
/// provides (a web identity token, instance metadata), so a pod's role works without keys.
#[derive(Clone, Default)]
pub struct S3Options {
    /// Endpoint URL of an S3-compatible server; AWS's regional endpoint when `None`.
    pub endpoint: Option<String>,
    /// Region signed into every request (`us-east-1` when `None`).
    pub region: Option<String>,
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<SecretString>,
    pub session_token: Option<SecretString>,
    /// `https://bucket.endpoint/key` instead of `https://endpoint/bucket/key`.
    pub virtual_hosted_style: bool,
    /// Allow an `http://` endpoint (a local or test server).
    pub allow_http: bool,
}

impl std::fmt::Debug for S3Options {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Options")
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .field("access_key_id", &self.access_key_id)
            .field(
                "secret_access_key",
                &self.secret_access_key.as_ref().map(|_| "***"),
            )
            .field("session_token", &self.session_token.as_ref().map(|_| "***"))
            .field("virtual_hosted_style", &self.virtual_hosted_style)
            .field("allow_http", &self.allow_http)
            .finish()
    }
}

/// Why the blob store cannot serve, in words an operator can act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BlobHealth {
    Ready,
    /// The bucket (or directory) does not exist.
    Missing(String),
    /// The store refused our credentials.
    CredentialsRefused(String),
    /// Any other failure: unreachable, timed out, a server error.
    Unavailable(String),
}

/// Handle to the blob store; cheap to clone.
#[derive(Clone)]
pub struct BlobStore {
    inner: Arc<dyn ObjectStore>,
    description: String,
}

impl std::fmt::Debug for BlobStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlobStore")
            .field("location", &self.description)
            .finish()
    }
}

impl BlobStore {
    /// Blobs as files under `dir` (created when missing).
    pub fn local(dir: &Path) -> Result<Self, BlobError> {
        std::fs::create_dir_all(dir)?;
        let inner = LocalFileSystem::new_with_prefix(dir)?;
        Ok(Self {
            inner: Arc::new(inner),
            description: format!("local directory {}", dir.display()),
        })
    }

    /// `s3://bucket[/prefix]` for S3-compatible stores, reached as `s3` says; `file:///abs/dir`
    /// or a plain path for a local directory.
    pub fn from_url(url: &str, s3: &S3Options) -> Result<Self, BlobError> {
        if let Some(rest) = url.strip_prefix("s3://") {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            if bucket.is_empty() {
                return Err(BlobError::Config("s3:// URL without a bucket".into()));
            }
            let mut builder = object_store::aws::AmazonS3Builder::from_env()
                .with_bucket_name(bucket)
                .with_virtual_hosted_style_request(s3.virtual_hosted_style)
                .with_allow_http(s3.allow_http);
            if let Some(endpoint) = &s3.endpoint {
                builder = builder.with_endpoint(endpoint.trim_end_matches('/'));
            }
            if let Some(region) = &s3.region {
                builder = builder.with_region(region);
            }
            if let Some(id) = &s3.access_key_id {
                builder = builder.with_access_key_id(id);
            }
            if let Some(secret) = &s3.secret_access_key {
                builder = builder.with_secret_access_key(secret.expose_secret());
            }
            if let Some(token) = &s3.session_token {
                builder = builder.with_token(token.expose_secret());
            }
            let s3 = builder
                .build()
                .map_err(|e| BlobError::Config(e.to_string()))?;
            let inner: Arc<dyn ObjectStore> = if prefix.trim_matches('/').is_empty() {
                Arc::new(s3)
            } else {
                Arc::new(object_store::prefix::PrefixStore::new(
                    s3,
                    prefix.trim_matches('/'),
                ))
            };
            return Ok(Self {
                inner,
                description: format!("s3 bucket {bucket}"),
            });
        }
        let dir = url.strip_prefix("file://").unwrap_or(url);
        if dir.contains("://") {
            return Err(BlobError::Config(format!(
                "unsupported storage URL scheme in {url:?}; use s3://bucket/prefix or a directory"
            )));
        }
        Self::local(Path::new(dir))
    }

    pub fn description(&self) -> &str {
        &self.description
    }

    /// Whether the store answers, with its bucket present and our credentials accepted: reads
    /// a probe key that is never written, which costs one request and needs no listing
    /// permission. S3 answers a missing key `NoSuchKey` and a missing bucket `NoSuchBucket`,
    /// both 404: the error code in the answer tells them apart.
    pub async fn health(&self) -> BlobHealth {
        let probe = ObjectPath::from("readiness-probe");
        let error = match self.inner.get(&probe).await {
            Ok(_) => return BlobHealth::Ready,
            Err(error) => error,
        };
        let mut answer = error.to_string();
        let mut source = std::error::Error::source(&error);
        while let Some(cause) = source {
            answer.push_str(&format!(" / {cause}"));
            source = cause.source();
        }
        match error {
            object_store::Error::NotFound { .. } if !answer.contains("NoSuchBucket") => {
                BlobHealth::Ready
            }
            object_store::Error::NotFound { .. } => {
                BlobHealth::Missing(format!("{} does not exist", self.description))
            }
            object_store::Error::PermissionDenied { .. }
            | object_store::Error::Unauthenticated { .. } => {
                tracing::warn!(%error, location = %self.description, "blob storage refused our credentials");
                BlobHealth::CredentialsRefused(format!(
                    "{} refused the credentials",
                    self.description
                ))
            }
            error => {
                tracing::warn!(%error, location = %self.description, "blob storage check failed");
                BlobHealth::Unavailable(format!("{} did not answer", self.description))
            }
        }
    }

    /// Every key in the store.
    pub async fn keys(&self) -> Result<Vec<String>, BlobError> {
        let mut listing = self.inner.list(None);
        let mut keys = Vec::new();
        while let Some(meta) = listing.next().await {
            keys.push(meta?.location.to_string());
        }
        Ok(keys)
    }

    fn path(key: &str) -> Result<ObjectPath, BlobError> {
        ObjectPath::parse(key).map_err(|e| BlobError::Config(format!("bad blob key {key:?}: {e}")))
    }

    /// Stores the file at `source` under `key`, streaming it (multipart for large files).
    pub async fn put_file(&self, key: &str, source: &Path) -> Result<u64, BlobError> {
        let file = tokio::fs::File::open(source).await?;
        let mut reader = tokio::io::BufReader::with_capacity(FILE_CHUNK_BYTES, file);
        let mut writer = BufWriter::new(Arc::clone(&self.inner), Self::path(key)?);
        let copied = match tokio::io::copy_buf(&mut reader, &mut writer).await {
            Ok(copied) => copied,
            Err(error) => {
                let _ = writer.abort().await;
                return Err(error.into());
            }
        };
        writer.shutdown().await?;
        Ok(copied)
    }

    pub async fn put_bytes(&self, key: &str, bytes: Bytes) -> Result<(), BlobError> {
        self.inner.put(&Self::path(key)?, bytes.into()).await?;
        Ok(())
    }

    /// The whole blob, as the store hands it out: an open file (local directory) or a stream.
    async fn get(&self, key: &str) -> Result<GetResult, BlobError> {
        match self.inner.get(&Self::path(key)?).await {
            Ok(result) => Ok(result),
            Err(object_store::Error::NotFound { .. }) => Err(BlobError::NotFound(key.to_string())),
            Err(error) => Err(error.into()),
        }
    }

    /// The blob's bytes as a stream of chunks (a local file's in [`FILE_CHUNK_BYTES`] pieces).
    pub async fn get_stream(
        &self,
        key: &str,
    ) -> Result<BoxStream<'static, Result<Bytes, BlobError>>, BlobError> {
        Ok(match self.get(key).await?.payload {
            GetResultPayload::File(file, _) => {
                ReaderStream::with_capacity(tokio::fs::File::from_std(file), FILE_CHUNK_BYTES)
                    .map(|r| r.map_err(BlobError::from))
                    .boxed()
            }
            GetResultPayload::Stream(stream) => stream.map(|r| r.map_err(BlobError::from)).boxed(),
        })
    }

    /// Copies the blob into a local file: a local blob in one blocking copy, a remote one as
    /// it streams in.
    pub async fn get_to_file(&self, key: &str, destination: &Path) -> Result<u64, BlobError> {
        let mut stream = match self.get(key).await?.payload {
            GetResultPayload::File(mut file, _) => {
                let destination = destination.to_owned();
                let copied = tokio::task::spawn_blocking(move || {
                    let mut out = std::fs::File::create(destination)?;
                    std::io::copy(&mut file, &mut out)
                })
                .await
                .map_err(std::io::Error::other)??;
                return Ok(copied);
            }
            GetResultPayload::Stream(stream) => stream.map(|r| r.map_err(BlobError::from)),
        };
        write_stream(&mut stream, destination).await
    }

    /// A file that holds the blob, for reading it by path: a local blob's own file (read where
    /// it is kept, not copied), a remote one copied into `copy` as it streams in. A local blob
    /// deleted before it is read is then gone for the reader too.
    pub async fn readable_path(&self, key: &str, copy: &Path) -> Result<PathBuf, BlobError> {
        match self.get(key).await?.payload {
            GetResultPayload::File(_, path) => Ok(path),
            GetResultPayload::Stream(stream) => {
                let mut stream = stream.map(|r| r.map_err(BlobError::from));
                write_stream(&mut stream, copy).await?;
                Ok(copy.to_path_buf())
            }
        }
    }

    pub async fn exists(&self, key: &str) -> Result<bool, BlobError> {
        match self.inner.head(&Self::path(key)?).await {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(error) => Err(error.into()),
        }
    }

    /// Deletes the blob; deleting one that is already gone succeeds.
    pub async fn delete(&self, key: &str) -> Result<(), BlobError> {
        match self.inner.delete(&Self::path(key)?).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(error) => Err(error.into()),
        }
    }
}

/// Writes a blob's chunks to a new file at `destination`; returns the bytes written.
async fn write_stream(
    stream: &mut (impl futures_util::Stream<Item = Result<Bytes, BlobError>> + Unpin),
    destination: &Path,
) -> Result<u64, BlobError> {
    let mut file = tokio::fs::File::create(destination).await?;
    let mut written = 0u64;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk?;
        file.write_all(&chunk).await?;
        written += chunk.len() as u64;
    }
    file.flush().await?;
    Ok(written)
}

/// Whether the S3 client reads the environment variable `name`: [`BlobStore::from_url`] starts
/// from `AmazonS3Builder::from_env`, which takes every `AWS_*` variable object_store knows
/// (`AWS_ENDPOINT_URL`, `AWS_REGION`, `AWS_ACCESS_KEY_ID`, `AWS_ALLOW_HTTP`, ...).
pub fn s3_reads_variable(name: &str) -> bool {
    name.starts_with("AWS_")
        && name
            .to_ascii_lowercase()
            .parse::<object_store::aws::AmazonS3ConfigKey>()
            .is_ok()
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_s3_variables_are_those_object_store_knows() {
        for name in [
            "AWS_ENDPOINT_URL",
            "AWS_REGION",
            "AWS_ACCESS_KEY_ID",
            "AWS_SECRET_ACCESS_KEY",
            "AWS_ALLOW_HTTP",
        ] {
            assert!(super::s3_reads_variable(name), "{name}");
        }
        for name in [
            "AWS_ENDPOINT_URLS",
            "AWS_NOT_A_SETTING",
            "S3_ENDPOINT",
            "aws_region",
        ] {
            assert!(!super::s3_reads_variable(name), "{name}");
        }
    }
}
