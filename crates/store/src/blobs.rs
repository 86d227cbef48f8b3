//! Blob storage for photo bytes and trained artifacts, behind `object_store`: a local directory
//! by default, S3 or any S3-compatible store when `STORAGE_URL` says `s3://bucket/prefix`
//! (credentials, region and endpoint from the usual `AWS_*` variables).

use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::stream::BoxStream;
use futures_util::StreamExt;
use object_store::buffered::BufWriter;
use object_store::local::LocalFileSystem;
use object_store::path::Path as ObjectPath;
use object_store::ObjectStore;
use tokio::io::AsyncWriteExt;

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

    /// `s3://bucket[/prefix]` for S3-compatible stores; `file:///abs/dir` or a plain path for a
    /// local directory.
    pub fn from_url(url: &str) -> Result<Self, BlobError> {
        if let Some(rest) = url.strip_prefix("s3://") {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            if bucket.is_empty() {
                return Err(BlobError::Config("s3:// URL without a bucket".into()));
            }
            let s3 = object_store::aws::AmazonS3Builder::from_env()
                .with_bucket_name(bucket)
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

    fn path(key: &str) -> Result<ObjectPath, BlobError> {
        ObjectPath::parse(key).map_err(|e| BlobError::Config(format!("bad blob key {key:?}: {e}")))
    }

    /// Stores the file at `source` under `key`, streaming it (multipart for large files).
    pub async fn put_file(&self, key: &str, source: &Path) -> Result<u64, BlobError> {
        let mut file = tokio::fs::File::open(source).await?;
        let mut writer = BufWriter::new(Arc::clone(&self.inner), Self::path(key)?);
        let copied = match tokio::io::copy(&mut file, &mut writer).await {
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

    /// The blob's bytes as a stream of chunks.
    pub async fn get_stream(
        &self,
        key: &str,
    ) -> Result<BoxStream<'static, Result<Bytes, BlobError>>, BlobError> {
        match self.inner.get(&Self::path(key)?).await {
            Ok(result) => Ok(result
                .into_stream()
                .map(|r| r.map_err(BlobError::from))
                .boxed()),
            Err(object_store::Error::NotFound { .. }) => Err(BlobError::NotFound(key.to_string())),
            Err(error) => Err(error.into()),
        }
    }

    /// Copies the blob into a local file.
    pub async fn get_to_file(&self, key: &str, destination: &Path) -> Result<u64, BlobError> {
        let mut stream = self.get_stream(key).await?;
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
