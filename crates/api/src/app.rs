//! The router: one function builds it for the server, the tests and the spec generator, so the
//! served routes and the documented routes are the same.

use axum::extract::DefaultBodyLimit;
use axum::http::{header, Request, StatusCode};
use axum::middleware;
use axum::Router;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::sensitive_headers::SetSensitiveRequestHeadersLayer;
use tower_http::trace::{DefaultOnResponse, TraceLayer};
use tower_http::LatencyUnit;
use tracing::Level;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use utoipa_swagger_ui::SwaggerUi;

use crate::openapi::ApiDoc;
use crate::routes::{
    archives, avatars, events, fal_webhook, generations, ops, photos, trainings, usage,
    webhook_endpoints,
};
use crate::state::AppState;

/// Every documented route.
fn documented_routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(avatars::create_avatar, avatars::list_avatars))
        .routes(routes!(
            avatars::get_avatar,
            avatars::update_avatar,
            avatars::delete_avatar
        ))
        .merge(
            OpenApiRouter::new()
                .routes(routes!(photos::add_photos, photos::list_photos))
                // Photo uploads are streamed and limited per file by the handler.
                .layer(DefaultBodyLimit::disable()),
        )
        .routes(routes!(photos::delete_photo))
        .routes(routes!(photos::get_photo_set))
        .routes(routes!(archives::inspect_training_archive))
        .routes(routes!(trainings::train_avatar))
        .routes(routes!(trainings::list_trainings))
        .routes(routes!(trainings::get_training))
        .routes(routes!(trainings::cancel_training))
        .routes(routes!(trainings::list_presets))
        .routes(routes!(
            generations::create_generation,
            generations::list_generations
        ))
        .routes(routes!(generations::get_generation))
        .routes(routes!(generations::get_generation_image))
        .routes(routes!(generations::cancel_generation))
        .routes(routes!(
            webhook_endpoints::create_webhook_endpoint,
            webhook_endpoints::list_webhook_endpoints
        ))
        .routes(routes!(
            webhook_endpoints::get_webhook_endpoint,
            webhook_endpoints::update_webhook_endpoint,
            webhook_endpoints::delete_webhook_endpoint
        ))
        .routes(routes!(webhook_endpoints::rotate_webhook_secret))
        .routes(routes!(webhook_endpoints::list_webhook_deliveries))
        .routes(routes!(webhook_endpoints::get_webhook_delivery))
        .routes(routes!(webhook_endpoints::replay_webhook_delivery))
        .routes(routes!(events::stream_events))
        .routes(routes!(usage::get_usage))
        .merge(
            OpenApiRouter::new()
                .routes(routes!(fal_webhook::fal_webhook))
                .layer(DefaultBodyLimit::max(fal_webhook::MAX_WEBHOOK_BYTES)),
        )
        .routes(routes!(ops::healthz))
        .routes(routes!(ops::readyz))
        .routes(routes!(ops::metrics))
}

/// The OpenAPI document of the service.
pub fn openapi() -> utoipa::openapi::OpenApi {
    crate::openapi::document_rate_limits(documented_routes().split_for_parts().1)
}

/// The spec as committed in `openapi/openapi.json`.
pub fn openapi_json() -> String {
    let mut json = openapi()
        .to_pretty_json()
        .expect("the OpenAPI document serialises");
    json.push('\n');
    json
}

/// The whole HTTP service: API, Swagger UI at `/docs`, the spec at `/openapi.json`, and the
/// layers every request passes through.
pub fn router(state: AppState) -> Router {
    let limits = state.settings.http;
    let (api, spec) = documented_routes().split_for_parts();
    let spec = crate::openapi::document_rate_limits(spec);
    // Layers listed first run innermost.
    api.merge(SwaggerUi::new("/docs").url("/openapi.json", spec))
        .fallback(|| async { StatusCode::NOT_FOUND })
        .layer(DefaultBodyLimit::max(limits.max_body_bytes))
        .layer(middleware::from_fn_with_state(state.clone(), deadline))
        .layer(CatchPanicLayer::new())
        .layer(middleware::from_fn(crate::problem::render_problems))
        .layer(middleware::from_fn_with_state(
            state.metrics.clone(),
            crate::metrics::track,
        ))
        .layer(PropagateRequestIdLayer::x_request_id())
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(|request: &Request<_>| {
                    let request_id = request
                        .headers()
                        .get("x-request-id")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("-");
                    // The path only: query strings may carry tokens.
                    let span = tracing::info_span!(
                        "request",
                        request_id,
                        method = %request.method(),
                        path = %request.uri().path(),
                        tenant_id = tracing::field::Empty,
                        otel.kind = "server",
                    );
                    // The caller's W3C trace context, when it sent a valid one.
                    service::trace_context::continue_trace(
                        &span,
                        request
                            .headers()
                            .get(service::trace_context::TRACEPARENT)
                            .and_then(|v| v.to_str().ok()),
                    );
                    span
                })
                .on_request(())
                .on_response(
                    DefaultOnResponse::new()
                        .level(Level::INFO)
                        .latency_unit(LatencyUnit::Millis),
                ),
        )
        .layer(SetRequestIdLayer::x_request_id(MakeRequestUuid))
        .layer(SetSensitiveRequestHeadersLayer::new([
            header::AUTHORIZATION,
        ]))
        // Outermost, so that `app` covers every layer's own time.
        .layer(tower::util::option_layer(
            limits
                .server_timing
                .then(|| middleware::from_fn(crate::server_timing::report)),
        ))
        .with_state(state)
}

/// Uploads and fetches of whole photo sets may take longer than an ordinary request; a stopping
/// process may wait this long for one to finish.
pub const LONG_REQUEST_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(600);

/// Answers 408 when a request takes longer than allowed: `REQUEST_TIMEOUT`, or ten minutes for
/// the routes that move photo sets and for generation requests (which may hold the answer for
/// up to 60 s under `Prefer: wait`, and bound that wait themselves).
async fn deadline(
    axum::extract::State(state): axum::extract::State<AppState>,
    request: axum::extract::Request,
    next: middleware::Next,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let long = request.method() == axum::http::Method::POST
        && request
            .extensions()
            .get::<axum::extract::MatchedPath>()
            .is_some_and(|p| {
                matches!(
                    p.as_str(),
                    "/avatars/{id}/photos"
                        | "/training-archives/inspect"
                        | "/avatars/{id}/generations"
                )
            });
    let limit = if long {
        LONG_REQUEST_TIMEOUT
    } else {
        state.settings.http.request_timeout
    };
    match tokio::time::timeout(limit, next.run(request)).await {
        Ok(response) => response,
        Err(_) => StatusCode::REQUEST_TIMEOUT.into_response(),
    }
}

/// Completes on SIGTERM or Ctrl-C.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = ctrl_c => {},
        _ = terminate => {},
    }
    tracing::info!("shutting down: finishing in-flight requests");
}
