//! Storage upload: initiate, then PUT the bytes to the returned URL (multipart above the
//! configured threshold). Bodies are streamed from the file or stream; at most one part is held
//! in memory, and only for stream uploads.

use std::path::Path;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_util::{Stream, StreamExt};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio_util::io::ReaderStream;
use url::Url;

use crate::client::{decode, join_path, FalClient};
use crate::error::FalError;
use crate::retry::Operation;

/// Bytes read from the file per piece of an upload's body: each read of a file is handed to a
/// blocking thread, so large pieces send an archive in a few hand-offs instead of one per
/// 4 KiB.
const FILE_CHUNK_BYTES: usize = 256 * 1024;

/// Header of the initiate call that sets the uploaded object's lifecycle (fal-js sends
/// `X-Fal-Object-Lifecycle`; the Python client also sends `X-Fal-Object-Lifecycle-Preference`,
/// so both are sent).
const LIFECYCLE_HEADERS: [&str; 2] = [
    "x-fal-object-lifecycle",
    "x-fal-object-lifecycle-preference",
];

/// How long fal keeps an uploaded object, and who may read it.
#[serde_with::skip_serializing_none]
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ObjectLifecycle {
    pub expiration_duration_seconds: Option<u64>,
    pub initial_acl: Option<serde_json::Value>,
}

impl ObjectLifecycle {
    /// Expire the object `after` the upload, e.g. a training archive once training has read it.
    pub fn expires_after(after: Duration) -> Self {
        Self {
            expiration_duration_seconds: Some(after.as_secs().max(1)),
            initial_acl: None,
        }
    }
}

/// A finished upload: pass `file_url` to the model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UploadedFile {
    pub file_url: Url,
    pub size: u64,
    pub multipart: bool,
}

#[derive(Deserialize)]
struct Initiated {
    upload_url: Url,
    file_url: Url,
}

#[derive(Deserialize)]
struct PartAnswer {
    #[serde(default)]
    etag: Option<String>,
}

#[derive(Serialize)]
struct CompletedPart {
    #[serde(rename = "partNumber")]
    part_number: u32,
    etag: String,
}

/// Bytes of a downloaded file, as they arrive.
pub type ByteStream = std::pin::Pin<Box<dyn Stream<Item = Result<Bytes, FalError>> + Send>>;

impl FalClient {
    /// Streams a file fal returned (a LoRA, an image) from its URL. No key is sent: fal's CDN
    /// files are public. Connection failures and 429/5xx answers are retried by the result
    /// policy; the body itself is not re-fetched once it started.
    #[tracing::instrument(skip_all)]
    pub async fn download(&self, url: &Url) -> Result<ByteStream, FalError> {
        let policy = &self.config.retry.result;
        let mut retries = 0;
        loop {
            let attempt = self
                .with_extra_headers(
                    self.http
                        .get(url.clone())
                        .timeout(self.config.upload_timeout),
                )
                .send()
                .await;
            let error = match attempt {
                Ok(response) if response.status().is_success() => {
                    return Ok(Box::pin(response.bytes_stream().map(|chunk| {
                        chunk.map_err(|e| {
                            FalError::transport(crate::error::TransportStage::AfterSend, e)
                        })
                    })));
                }
                Ok(response) => {
                    let status = response.status();
                    let headers = response.headers().clone();
                    let body = response.bytes().await.unwrap_or_default();
                    crate::classify::classify(status, &headers, &body)
                }
                Err(e) => FalError::send_failed(e),
            };
            if retries < policy.max_retries && part_retryable(&error) {
                tokio::time::sleep(policy.backoff(retries, rand::random::<f64>())).await;
                retries += 1;
                continue;
            }
            return Err(error);
        }
    }

    /// Uploads a local file, streaming it from disk.
    #[tracing::instrument(skip_all, fields(file = %path.display()))]
    pub async fn upload_file(
        &self,
        path: &Path,
        content_type: &str,
        lifecycle: Option<&ObjectLifecycle>,
    ) -> Result<UploadedFile, FalError> {
        let size = tokio::fs::metadata(path).await?.len();
        let file_name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "upload.bin".into());
        if size > self.config.multipart_threshold {
            let initiated = self
                .initiate(true, &file_name, content_type, lifecycle)
                .await?;
            let part_size = self.config.multipart_part_size.max(1);
            let mut parts = Vec::new();
            let mut offset = 0u64;
            let mut number = 1u32;
            while offset < size {
                let len = part_size.min(size - offset);
                let etag = self
                    .put_part_with_retry(
                        &initiated.upload_url,
                        number,
                        || async move {
                            let mut file = tokio::fs::File::open(path).await?;
                            file.seek(std::io::SeekFrom::Start(offset)).await?;
                            Ok(reqwest::Body::wrap_stream(ReaderStream::with_capacity(
                                file.take(len),
                                FILE_CHUNK_BYTES,
                            )))
                        },
                        len,
                    )
                    .await?;
                parts.push(CompletedPart {
                    part_number: number,
                    etag,
                });
                offset += len;
                number += 1;
            }
            self.complete_multipart(&initiated.upload_url, &parts)
                .await?;
            return Ok(UploadedFile {
                file_url: initiated.file_url,
                size,
                multipart: true,
            });
        }
        let initiated = self
            .initiate(false, &file_name, content_type, lifecycle)
            .await?;
        let upload_url = initiated.upload_url.clone();
        self.send_with_retry(Operation::Upload, || {
            // Re-opened per attempt so a retry sends the whole file again.
            let path = path.to_owned();
            let body = reqwest::Body::wrap_stream(
                futures_util::stream::once(async move { tokio::fs::File::open(path).await })
                    .map(|opened| match opened {
                        Ok(file) => ReaderStream::with_capacity(file, FILE_CHUNK_BYTES).boxed(),
                        Err(e) => futures_util::stream::once(async move { Err(e) }).boxed(),
                    })
                    .flatten(),
            );
            Ok(self
                .http
                .put(upload_url.clone())
                .timeout(self.config.upload_timeout)
                .header(http::header::CONTENT_TYPE, content_type)
                .header(http::header::CONTENT_LENGTH, size)
                .body(body))
        })
        .await
        .map_err(|f| f.error)?;
        Ok(UploadedFile {
            file_url: initiated.file_url,
            size,
            multipart: false,
        })
    }

    /// Uploads bytes from a stream. `length`, when known, picks single or multipart upload;
    /// an unknown length is sent as one chunked PUT. A stream cannot be replayed, so the PUTs
    /// are not retried.
    #[tracing::instrument(skip_all, fields(file_name = %file_name))]
    pub async fn upload_stream<S>(
        &self,
        stream: S,
        file_name: &str,
        content_type: &str,
        length: Option<u64>,
        lifecycle: Option<&ObjectLifecycle>,
    ) -> Result<UploadedFile, FalError>
    where
        S: Stream<Item = Result<Bytes, std::io::Error>> + Send + 'static,
    {
        let multipart = length.is_some_and(|l| l > self.config.multipart_threshold);
        let initiated = self
            .initiate(multipart, file_name, content_type, lifecycle)
            .await?;
        if !multipart {
            let mut builder = self
                .http
                .put(initiated.upload_url.clone())
                .timeout(self.config.upload_timeout)
                .header(http::header::CONTENT_TYPE, content_type);
            if let Some(len) = length {
                builder = builder.header(http::header::CONTENT_LENGTH, len);
            }
            let counted = CountingStream::new(stream);
            let sent = counted.counter();
            self.send_once(builder.body(reqwest::Body::wrap_stream(counted)))
                .await
                .map_err(|f| f.error)?;
            return Ok(UploadedFile {
                file_url: initiated.file_url,
                size: sent.load(std::sync::atomic::Ordering::Relaxed),
                multipart: false,
            });
        }
        let part_size = self.config.multipart_part_size.max(1) as usize;
        let mut stream = Box::pin(stream);
        let mut parts = Vec::new();
        let mut buffer = BytesMut::with_capacity(part_size);
        let mut total = 0u64;
        let mut finished = false;
        while !finished {
            while buffer.len() < part_size {
                match stream.next().await {
                    Some(chunk) => buffer.extend_from_slice(&chunk?),
                    None => {
                        finished = true;
                        break;
                    }
                }
            }
            while buffer.len() >= part_size || (finished && !buffer.is_empty()) {
                let take = part_size.min(buffer.len());
                let part = buffer.split_to(take).freeze();
                let number = parts.len() as u32 + 1;
                let len = part.len() as u64;
                let etag = self
                    .put_part_with_retry(
                        &initiated.upload_url,
                        number,
                        || {
                            let part = part.clone();
                            async move { Ok(reqwest::Body::from(part)) }
                        },
                        len,
                    )
                    .await?;
                total += len;
                parts.push(CompletedPart {
                    part_number: number,
                    etag,
                });
            }
        }
        self.complete_multipart(&initiated.upload_url, &parts)
            .await?;
        Ok(UploadedFile {
            file_url: initiated.file_url,
            size: total,
            multipart: true,
        })
    }

    async fn initiate(
        &self,
        multipart: bool,
        file_name: &str,
        content_type: &str,
        lifecycle: Option<&ObjectLifecycle>,
    ) -> Result<Initiated, FalError> {
        let path = if multipart {
            "storage/upload/initiate-multipart"
        } else {
            "storage/upload/initiate"
        };
        let mut url = join_path(&self.config.rest_url, path);
        url.query_pairs_mut()
            .append_pair("storage_type", &self.config.storage_type);
        let body = serde_json::json!({ "content_type": content_type, "file_name": file_name });
        let lifecycle = lifecycle
            .map(serde_json::to_string)
            .transpose()
            .map_err(|e| FalError::InvalidRequest(format!("lifecycle: {e}")))?;
        let answer = self
            .send_with_retry(Operation::Upload, || {
                let mut builder = self
                    .authorized(self.http.post(url.clone()))
                    .timeout(self.config.request_timeout)
                    .json(&body);
                if let Some(lifecycle) = &lifecycle {
                    for name in LIFECYCLE_HEADERS {
                        builder = builder.header(name, lifecycle.as_str());
                    }
                }
                Ok(builder)
            })
            .await
            .map_err(|f| f.error)?;
        decode(&answer.body, "storage initiate")
    }

    /// PUTs part `number` to `{origin}{path}/{number}{query}`; the etag comes back in the JSON
    /// body (fal-js) or the `etag` header.
    async fn put_part_with_retry<F, Fut>(
        &self,
        upload_url: &Url,
        number: u32,
        body: F,
        len: u64,
    ) -> Result<String, FalError>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = Result<reqwest::Body, FalError>>,
    {
        let url = sibling_url(upload_url, &number.to_string());
        let policy = self.config.retry.upload.clone();
        let mut retries = 0;
        loop {
            let builder = self
                .http
                .put(url.clone())
                .timeout(self.config.upload_timeout)
                .header(http::header::CONTENT_LENGTH, len)
                .body(body().await?);
            match self.send_once(builder).await.map_err(|f| f.error) {
                Ok(answer) => {
                    let from_body = serde_json::from_slice::<PartAnswer>(&answer.body)
                        .ok()
                        .and_then(|p| p.etag);
                    let from_header = answer
                        .headers
                        .get(http::header::ETAG)
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_owned);
                    return from_body.or(from_header).ok_or_else(|| {
                        FalError::InvalidRequest(format!("upload part {number} returned no etag"))
                    });
                }
                Err(e) if retries < policy.max_retries && part_retryable(&e) => {
                    retries += 1;
                    tokio::time::sleep(policy.backoff(retries - 1, 0.5)).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    async fn complete_multipart(
        &self,
        upload_url: &Url,
        parts: &[CompletedPart],
    ) -> Result<(), FalError> {
        let url = sibling_url(upload_url, "complete");
        let body = serde_json::json!({ "parts": parts });
        self.send_with_retry(Operation::Upload, || {
            Ok(self
                .http
                .post(url.clone())
                .timeout(self.config.request_timeout)
                .json(&body))
        })
        .await
        .map_err(|f| f.error)?;
        Ok(())
    }
}

fn part_retryable(error: &FalError) -> bool {
    match error {
        FalError::Transport { .. } => true,
        other => other.http_status().is_some_and(|s| s == 429 || s >= 500),
    }
}

/// `{origin}{path}/{suffix}{query}` as fal-js builds multipart part and completion URLs.
fn sibling_url(upload_url: &Url, suffix: &str) -> Url {
    let mut url = upload_url.clone();
    let path = format!("{}/{}", upload_url.path().trim_end_matches('/'), suffix);
    url.set_path(&path);
    url
}

/// Counts the bytes a stream yields (the size of an upload of unknown length).
struct CountingStream<S> {
    inner: std::pin::Pin<Box<S>>,
    count: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl<S> CountingStream<S> {
    fn new(inner: S) -> Self {
        Self {
            inner: Box::pin(inner),
            count: Default::default(),
        }
    }

    fn counter(&self) -> std::sync::Arc<std::sync::atomic::AtomicU64> {
        self.count.clone()
    }
}

impl<S> Stream for CountingStream<S>
where
    S: Stream<Item = Result<Bytes, std::io::Error>>,
{
    type Item = Result<Bytes, std::io::Error>;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        let polled = self.inner.as_mut().poll_next(cx);
        if let std::task::Poll::Ready(Some(Ok(chunk))) = &polled {
            self.count
                .fetch_add(chunk.len() as u64, std::sync::atomic::Ordering::Relaxed);
        }
        polled
    }
}
