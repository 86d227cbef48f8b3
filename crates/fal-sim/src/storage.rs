//! Storage: `POST /rest/storage/upload/initiate[-multipart]`, the signed upload URLs on the CDN
//! host, and public `GET /cdn/files/...`.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use rand::Rng;
use serde::Deserialize;
use serde_json::json;
use sha2::{Digest, Sha256};

use crate::http::{detail_response, json_response, paying_account};
use crate::state::{PendingUpload, SharedSim, StoredFile};

/// Lifecycle headers: fal-js sends the first on initiate, the Python client both.
const LIFECYCLE_HEADERS: [&str; 2] = [
    "x-fal-object-lifecycle",
    "x-fal-object-lifecycle-preference",
];

#[derive(Deserialize, Default)]
pub(crate) struct InitiateBody {
    #[serde(default)]
    content_type: Option<String>,
    #[serde(default)]
    file_name: Option<String>,
}

#[derive(Deserialize)]
pub(crate) struct Signature {
    #[serde(default)]
    signature: Option<String>,
}

pub(crate) async fn initiate(
    State(sim): State<SharedSim>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    start_upload(&sim, &headers, &body, false)
}

pub(crate) async fn initiate_multipart(
    State(sim): State<SharedSim>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    start_upload(&sim, &headers, &body, true)
}

fn start_upload(sim: &SharedSim, headers: &HeaderMap, body: &[u8], multipart: bool) -> Response {
    if let Err(e) = paying_account(sim, headers) {
        return e.into_response();
    }
    let request: InitiateBody = match serde_json::from_slice(body) {
        Ok(b) => b,
        Err(_) => {
            return detail_response(
                StatusCode::UNPROCESSABLE_ENTITY,
                vec![crate::models::body_not_a_dict()],
            )
        }
    };
    let expires_at = LIFECYCLE_HEADERS
        .iter()
        .find_map(|name| headers.get(*name))
        .and_then(|v| serde_json::from_slice::<serde_json::Value>(v.as_bytes()).ok())
        .and_then(|v| {
            v.get("expiration_duration_seconds")
                .and_then(serde_json::Value::as_u64)
        })
        .map(|secs| Instant::now() + Duration::from_secs(secs));
    let file_name = sanitize(request.file_name.as_deref().unwrap_or("upload.bin"));
    let content_type = request
        .content_type
        .unwrap_or_else(|| "application/octet-stream".into());
    let upload_id = uuid::Uuid::new_v4().simple().to_string();
    let signature: String = random_token(24);
    let file_path = format!("sim/{}_{}", random_token(10), file_name);
    sim.lock().uploads.insert(
        upload_id.clone(),
        PendingUpload {
            file_path: file_path.clone(),
            content_type,
            expires_at,
            signature: signature.clone(),
            parts: HashMap::new(),
        },
    );
    let kind = if multipart { "multipart" } else { "upload" };
    json_response(
        StatusCode::OK,
        json!({
            "upload_url": format!("{}/{kind}/{upload_id}?signature={signature}", sim.urls.cdn),
            "file_url": format!("{}/files/{file_path}", sim.urls.cdn),
        }),
    )
}

fn random_token(len: usize) -> String {
    rand::thread_rng()
        .sample_iter(rand::distributions::Alphanumeric)
        .take(len)
        .map(char::from)
        .collect()
}

fn sanitize(name: &str) -> String {
    let cleaned: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_') {
                c
            } else {
                '_'
            }
        })
        .collect();
    if cleaned.is_empty() {
        "upload.bin".into()
    } else {
        cleaned
    }
}

/// Why a signed upload call has no upload to act on.
enum UploadRefusal {
    NotFound,
    BadSignature,
}

impl IntoResponse for UploadRefusal {
    fn into_response(self) -> Response {
        match self {
            UploadRefusal::NotFound => detail_response(StatusCode::NOT_FOUND, "Upload not found"),
            UploadRefusal::BadSignature => {
                detail_response(StatusCode::FORBIDDEN, "Invalid upload signature")
            }
        }
    }
}

/// The pending upload `upload_id` when `query` carries its signature.
fn signed_upload<'a>(
    uploads: &'a mut HashMap<String, PendingUpload>,
    upload_id: &str,
    query: &Signature,
) -> Result<&'a mut PendingUpload, UploadRefusal> {
    match uploads.get_mut(upload_id) {
        Some(upload) if Some(&upload.signature) == query.signature.as_ref() => Ok(upload),
        Some(_) => Err(UploadRefusal::BadSignature),
        None => Err(UploadRefusal::NotFound),
    }
}

/// `PUT {upload_url}`: the whole object, no Authorization needed (a signed URL).
pub(crate) async fn put_single(
    State(sim): State<SharedSim>,
    Path(upload_id): Path<String>,
    Query(query): Query<Signature>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let hold = {
        let mut inner = sim.lock();
        let hold = inner.uploads_to_hold > 0;
        if hold {
            inner.uploads_to_hold -= 1;
            inner.uploads_held += 1;
        }
        hold
    };
    if hold {
        sim.changed.notify_waiters();
        if let Ok(permit) = sim.held_uploads.acquire().await {
            permit.forget();
        }
    }
    let mut inner = sim.lock();
    if let Err(refusal) = signed_upload(&mut inner.uploads, &upload_id, &query) {
        return refusal.into_response();
    }
    let upload = inner.uploads.remove(&upload_id).expect("checked above");
    let content_type = headers
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .unwrap_or(upload.content_type);
    inner.files.insert(
        upload.file_path,
        StoredFile {
            bytes: body,
            content_type,
            expires_at: upload.expires_at,
        },
    );
    StatusCode::OK.into_response()
}

/// `PUT {upload_url path}/{n}{query}`: one part; answers `{partNumber, etag}`.
pub(crate) async fn put_part(
    State(sim): State<SharedSim>,
    Path((upload_id, part)): Path<(String, String)>,
    Query(query): Query<Signature>,
    body: Bytes,
) -> Response {
    let Ok(number) = part.parse::<u32>() else {
        return detail_response(StatusCode::BAD_REQUEST, "Invalid part number");
    };
    if number == 0 {
        return detail_response(StatusCode::BAD_REQUEST, "Part numbers start at 1");
    }
    let etag = hex::encode(&Sha256::digest(&body)[..16]);
    let mut inner = sim.lock();
    let upload = match signed_upload(&mut inner.uploads, &upload_id, &query) {
        Ok(upload) => upload,
        Err(refusal) => return refusal.into_response(),
    };
    upload.parts.insert(number, (body, etag.clone()));
    let mut response = json_response(StatusCode::OK, json!({"partNumber": number, "etag": etag}));
    if let Ok(value) = HeaderValue::from_str(&etag) {
        response
            .headers_mut()
            .insert(axum::http::header::ETAG, value);
    }
    response
}

#[derive(Deserialize)]
pub(crate) struct CompleteBody {
    parts: Vec<CompletePart>,
}

#[derive(Deserialize)]
pub(crate) struct CompletePart {
    #[serde(rename = "partNumber")]
    part_number: u32,
    etag: String,
}

/// `POST {upload_url path}/complete{query}` with `{"parts":[{"partNumber","etag"}]}`.
pub(crate) async fn complete_multipart(
    State(sim): State<SharedSim>,
    Path(upload_id): Path<String>,
    Query(query): Query<Signature>,
    body: Bytes,
) -> Response {
    let Ok(request) = serde_json::from_slice::<CompleteBody>(&body) else {
        return detail_response(StatusCode::BAD_REQUEST, "Invalid completion body");
    };
    let mut inner = sim.lock();
    let upload = match signed_upload(&mut inner.uploads, &upload_id, &query) {
        Ok(upload) => upload,
        Err(refusal) => return refusal.into_response(),
    };
    let mut assembled = Vec::new();
    for (index, part) in request.parts.iter().enumerate() {
        if part.part_number as usize != index + 1 {
            return detail_response(
                StatusCode::BAD_REQUEST,
                "Parts must be numbered 1..n in order",
            );
        }
        match upload.parts.get(&part.part_number) {
            Some((bytes, etag)) if *etag == part.etag => assembled.extend_from_slice(bytes),
            _ => {
                return detail_response(
                    StatusCode::BAD_REQUEST,
                    format!(
                        "Part {} is missing or its etag does not match",
                        part.part_number
                    ),
                )
            }
        }
    }
    if request.parts.len() != upload.parts.len() {
        return detail_response(
            StatusCode::BAD_REQUEST,
            "Uploaded parts are missing from the completion",
        );
    }
    let upload = inner.uploads.remove(&upload_id).expect("checked above");
    let file_url = format!("{}/files/{}", sim.urls.cdn, upload.file_path);
    inner.files.insert(
        upload.file_path,
        StoredFile {
            bytes: Bytes::from(assembled),
            content_type: upload.content_type,
            expires_at: upload.expires_at,
        },
    );
    json_response(StatusCode::OK, json!({ "file_url": file_url }))
}

/// Public CDN read. Expired objects are gone.
pub(crate) async fn serve_file(State(sim): State<SharedSim>, Path(path): Path<String>) -> Response {
    let file = sim.lock().files.get(&path).cloned();
    match file {
        Some(file) if file.expires_at.is_none_or(|at| Instant::now() < at) => (
            StatusCode::OK,
            [(axum::http::header::CONTENT_TYPE, file.content_type)],
            file.bytes,
        )
            .into_response(),
        _ => detail_response(StatusCode::NOT_FOUND, "File not found"),
    }
}
