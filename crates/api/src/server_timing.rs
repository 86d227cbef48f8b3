//! `SERVER_TIMING`: each answer says how long its request spent in the database and outside
//! it, in a `Server-Timing` header (`db;dur=1.84;desc="4 statements", app;dur=0.42`, in
//! milliseconds), which browsers' developer tools and `cargo xtask bench-requests` read.
//!
//! The database time is what sqlx measures for each statement the request's own task runs:
//! from sending it until its last row is read, the commit included. Waiting for a pool
//! connection, and work the request hands to other tasks, count as `app`. sqlx reports each
//! statement as a `sqlx::query` event; [`DatabaseTimeLayer`] adds it to the request that ran it.

use std::cell::Cell;
use std::time::{Duration, Instant};

use axum::extract::Request;
use axum::http::HeaderValue;
use axum::middleware::Next;
use axum::response::Response;
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::layer::Context;
use tracing_subscriber::Layer;

/// The target of sqlx's per-statement events.
pub const SQLX_STATEMENTS: &str = "sqlx::query";

/// The database time of the request the current task serves.
#[derive(Default)]
struct DatabaseTime {
    spent: Cell<Duration>,
    statements: Cell<u32>,
}

tokio::task_local! {
    static DATABASE_TIME: DatabaseTime;
}

/// Adds each statement's time to the request whose task ran it. Install it with a filter
/// that passes [`SQLX_STATEMENTS`] at `DEBUG`, the level sqlx reports statements at.
pub struct DatabaseTimeLayer;

impl<S: Subscriber> Layer<S> for DatabaseTimeLayer {
    fn on_event(&self, event: &Event<'_>, _: Context<'_, S>) {
        if event.metadata().target() != SQLX_STATEMENTS {
            return;
        }
        let mut elapsed = Elapsed(None);
        event.record(&mut elapsed);
        let Some(seconds) = elapsed.0 else { return };
        // Outside a request (workers, start-up) there is nobody to tell.
        let _ = DATABASE_TIME.try_with(|time| {
            time.spent
                .set(time.spent.get() + Duration::from_secs_f64(seconds.max(0.0)));
            time.statements.set(time.statements.get() + 1);
        });
    }
}

/// The `elapsed_secs` field of a sqlx statement event.
struct Elapsed(Option<f64>);

impl Visit for Elapsed {
    fn record_f64(&mut self, field: &Field, value: f64) {
        if field.name() == "elapsed_secs" {
            self.0 = Some(value);
        }
    }

    fn record_debug(&mut self, _: &Field, _: &dyn std::fmt::Debug) {}
}

/// What one answer's `Server-Timing` header says: written by [`report`], read by
/// [`Timing::parse`] (the tests and `cargo xtask bench-requests`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Timing {
    pub database: Duration,
    pub statements: u32,
    pub app: Duration,
}

impl Timing {
    fn header_value(&self) -> String {
        format!(
            "db;dur={:.3};desc=\"{} statements\", app;dur={:.3}",
            self.database.as_secs_f64() * 1e3,
            self.statements,
            self.app.as_secs_f64() * 1e3
        )
    }

    /// The timing a header written by this service gives; `None` for any other header.
    pub fn parse(header: &str) -> Option<Self> {
        let (mut database, mut statements, mut app) = (None, None, None);
        for metric in header.split(',') {
            let mut parts = metric.trim().split(';');
            let name = parts.next()?;
            for part in parts {
                match (name, part.split_once('=')?) {
                    ("db", ("dur", ms)) => database = Some(milliseconds(ms)?),
                    ("app", ("dur", ms)) => app = Some(milliseconds(ms)?),
                    ("db", ("desc", desc)) => {
                        statements = desc.trim_matches('"').split(' ').next()?.parse().ok();
                    }
                    _ => {}
                }
            }
        }
        Some(Self {
            database: database?,
            statements: statements?,
            app: app?,
        })
    }
}

fn milliseconds(text: &str) -> Option<Duration> {
    let ms: f64 = text.parse().ok()?;
    (ms.is_finite() && ms >= 0.0).then(|| Duration::from_secs_f64(ms / 1e3))
}

/// Serves the request with its database time counted, and reports it in `Server-Timing`.
pub async fn report(request: Request, next: Next) -> Response {
    let started = Instant::now();
    let (mut response, database, statements) = DATABASE_TIME
        .scope(DatabaseTime::default(), async {
            let response = next.run(request).await;
            DATABASE_TIME.with(|time| (response, time.spent.get(), time.statements.get()))
        })
        .await;
    let timing = Timing {
        database,
        statements,
        app: started.elapsed().saturating_sub(database),
    };
    if let Ok(value) = HeaderValue::from_str(&timing.header_value()) {
        response.headers_mut().append("server-timing", value);
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_written_header_reads_back() {
        let timing = Timing {
            database: Duration::from_micros(1840),
            statements: 4,
            app: Duration::from_micros(420),
        };
        assert_eq!(
            timing.header_value(),
            "db;dur=1.840;desc=\"4 statements\", app;dur=0.420"
        );
        assert_eq!(Timing::parse(&timing.header_value()), Some(timing));
        assert_eq!(Timing::parse("cache;desc=hit"), None);
    }

    #[test]
    fn statements_add_up_to_the_request_that_ran_them() {
        let subscriber = tracing_subscriber::layer::SubscriberExt::with(
            tracing_subscriber::registry(),
            DatabaseTimeLayer,
        );
        let _default = tracing::subscriber::set_default(subscriber);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let (spent, statements) =
            runtime.block_on(DATABASE_TIME.scope(DatabaseTime::default(), async {
                tracing::debug!(target: "sqlx::query", elapsed_secs = 0.002_f64, "SELECT 1");
                tracing::debug!(target: "sqlx::query", elapsed_secs = 0.0005_f64, "COMMIT");
                // Not a statement: another target.
                tracing::debug!(target: "store", elapsed_secs = 1.0_f64, "other");
                DATABASE_TIME.with(|time| (time.spent.get(), time.statements.get()))
            }));
        assert_eq!(statements, 2);
        assert!(spent.abs_diff(Duration::from_micros(2500)) < Duration::from_micros(1));
        // A statement outside any request is nobody's and harms nothing.
        tracing::debug!(target: "sqlx::query", elapsed_secs = 0.1_f64, "SELECT 1");
    }
}
