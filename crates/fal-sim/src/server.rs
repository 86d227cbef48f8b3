//! The listener, the router and the per-connection plumbing.
//!
//! Connections are served one by one with hyper so that a handler can close its own connection
//! without answering (the "outcome unknown" submit fault).

use std::convert::Infallible;

use axum::body::Body;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::{any, get, post, put};
use axum::Router;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

use crate::http::{detail_response, json_response, ConnectionControl};
use crate::record::ReceivedRequest;
use crate::state::SharedSim;
use crate::{control, queue, storage};

/// Largest body kept verbatim in the received-request log.
const LOGGED_BODY_LIMIT: usize = 64 * 1024;

pub(crate) fn router(sim: SharedSim) -> Router {
    let limit = sim.config.max_upload_bytes;
    Router::new()
        .route("/rest/.well-known/jwks.json", get(jwks))
        .route("/rest/storage/upload/initiate", post(storage::initiate))
        .route(
            "/rest/storage/upload/initiate-multipart",
            post(storage::initiate_multipart),
        )
        .route("/cdn/upload/{upload_id}", put(storage::put_single))
        .route(
            "/cdn/multipart/{upload_id}/complete",
            post(storage::complete_multipart),
        )
        .route("/cdn/multipart/{upload_id}/{part}", put(storage::put_part))
        .route("/cdn/files/{*path}", get(storage::serve_file))
        .route("/queue/{*path}", any(queue::dispatch))
        .layer(middleware::from_fn_with_state(sim.clone(), record_request))
        .nest("/_sim", control::router())
        .layer(DefaultBodyLimit::max(limit))
        .with_state(sim)
}

/// Accepts connections until `shutdown` fires.
pub(crate) async fn serve(listener: TcpListener, router: Router, shutdown: CancellationToken) {
    loop {
        let stream = tokio::select! {
            _ = shutdown.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    tracing::warn!(error = %e, "fal-sim accept failed");
                    continue;
                }
            },
        };
        let router = router.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            let kill = CancellationToken::new();
            let control = ConnectionControl(kill.clone());
            let service = hyper::service::service_fn(
                move |mut request: hyper::Request<hyper::body::Incoming>| {
                    request.extensions_mut().insert(control.clone());
                    let router = router.clone();
                    async move {
                        let response = router.oneshot(request.map(Body::new)).await;
                        Ok::<_, Infallible>(response.unwrap_or_else(|never| match never {}))
                    }
                },
            );
            let connection = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service);
            tokio::select! {
                _ = connection => {}
                // Dropping the connection closes the socket without an answer.
                _ = kill.cancelled() => {}
                _ = shutdown.cancelled() => {}
            }
        });
    }
}

async fn jwks(State(sim): State<SharedSim>) -> Response {
    if sim.lock().jwks_down {
        return detail_response(StatusCode::SERVICE_UNAVAILABLE, "Service Unavailable");
    }
    let body = sim
        .keys
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .jwks(sim.config.jwks_x_padding);
    json_response(StatusCode::OK, body)
}

/// Logs every request (except control calls) before handling it.
async fn record_request(State(sim): State<SharedSim>, request: Request, next: Next) -> Response {
    let (parts, body) = request.into_parts();
    let bytes = match axum::body::to_bytes(body, sim.config.max_upload_bytes).await {
        Ok(bytes) => bytes,
        Err(_) => return detail_response(StatusCode::PAYLOAD_TOO_LARGE, "Payload too large"),
    };
    let headers = parts
        .headers
        .iter()
        .map(|(name, value)| {
            let value = value.to_str().unwrap_or("<binary>");
            let shown = if name == axum::http::header::AUTHORIZATION {
                mask_authorization(value)
            } else {
                value.to_owned()
            };
            (name.as_str().to_owned(), shown)
        })
        .collect();
    let body_text = (bytes.len() <= LOGGED_BODY_LIMIT)
        .then(|| std::str::from_utf8(&bytes).ok().map(str::to_owned))
        .flatten();
    {
        let mut inner = sim.lock();
        inner.next_seq += 1;
        let seq = inner.next_seq;
        let cap = sim.config.max_logged_requests.max(1);
        if inner.log.len() >= cap {
            let excess = inner.log.len() + 1 - cap;
            inner.log.drain(..excess);
        }
        inner.log.push(ReceivedRequest {
            seq,
            method: parts.method.to_string(),
            path: parts.uri.path().to_owned(),
            query: parts.uri.query().map(str::to_owned),
            headers,
            body_len: bytes.len(),
            body_text,
        });
    }
    sim.notify();
    next.run(Request::from_parts(parts, Body::from(bytes)))
        .await
}

/// `Key id:secret` becomes `Key id:***`: the log is for assertions, not for secrets.
fn mask_authorization(value: &str) -> String {
    match value.split_once(' ') {
        Some((scheme, credentials)) => {
            let id = credentials.split_once(':').map_or("", |(id, _)| id);
            format!("{scheme} {id}:***")
        }
        None => "***".into(),
    }
}
