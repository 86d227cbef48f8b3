//! `GET /usage`: what a tenant's trainings and generations came to, per UTC day, checked
//! against the jobs the API lists.

use std::collections::BTreeMap;

use blackbox::{problem, FalOptions, TestApp};
use chrono::{DateTime, Days, NaiveDate, Utc};
use fal_sim::{FailSpec, RequestFaults, WebhookFaults};
use reqwest::Method;
use serde_json::{json, Value};
use sqlx::PgPool;

const TRAINING_STATUSES: [&str; 9] = [
    "pending",
    "uploading",
    "submitted",
    "in_progress",
    "submit_unknown",
    "succeeded",
    "failed",
    "cancelled",
    "timed_out",
];
const GENERATION_STATUSES: [&str; 5] = [
    "pending",
    "in_progress",
    "succeeded",
    "failed",
    "partially_succeeded",
];

fn round(usd: f64) -> f64 {
    (usd * 10_000.0).round() / 10_000.0
}

fn day_of(resource: &Value) -> NaiveDate {
    resource["created_at"]
        .as_str()
        .unwrap()
        .parse::<DateTime<Utc>>()
        .unwrap()
        .date_naive()
}

/// What the usage of one day (or the totals) should be, summed from listed resources.
#[derive(Debug, Default, Clone, PartialEq)]
struct Expected {
    trainings: BTreeMap<String, u64>,
    training_estimate: f64,
    training_actual: Option<f64>,
    generations: BTreeMap<String, u64>,
    images: u64,
    generation_estimate: f64,
    generation_actual: Option<f64>,
}

fn add(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (None, None) => None,
        (a, b) => Some(round(a.unwrap_or(0.0) + b.unwrap_or(0.0))),
    }
}

impl Expected {
    fn training(&mut self, training: &Value, actual: Option<f64>) {
        *self
            .trainings
            .entry(training["status"].as_str().unwrap().into())
            .or_default() += 1;
        self.training_estimate =
            round(self.training_estimate + training["estimated_cost_usd"].as_f64().unwrap_or(0.0));
        self.training_actual = add(self.training_actual, actual);
    }

    fn generation(&mut self, generation: &Value, actual: Option<f64>) {
        *self
            .generations
            .entry(generation["status"].as_str().unwrap().into())
            .or_default() += 1;
        self.images += generation["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|item| item["images"].as_array().unwrap().len() as u64)
            .sum::<u64>();
        self.generation_estimate = round(
            self.generation_estimate + generation["estimated_cost_usd"].as_f64().unwrap_or(0.0),
        );
        self.generation_actual = add(self.generation_actual, actual);
    }

    /// Checks one entry of the report (`totals` or a day) against what was listed.
    fn check(&self, usage: &Value, what: &str) {
        let trainings = &usage["trainings"];
        for status in TRAINING_STATUSES {
            let want = self.trainings.get(status).copied().unwrap_or(0);
            assert_eq!(
                trainings["by_status"][status], want,
                "{what}: trainings {status}: {usage:#}"
            );
        }
        assert_eq!(
            trainings["total"],
            self.trainings.values().sum::<u64>(),
            "{what}"
        );
        assert_eq!(
            trainings["estimated_cost_usd"], self.training_estimate,
            "{what}"
        );
        assert_eq!(
            trainings["actual_cost_usd"],
            json!(self.training_actual),
            "{what}"
        );
        let generations = &usage["generations"];
        for status in GENERATION_STATUSES {
            let want = self.generations.get(status).copied().unwrap_or(0);
            assert_eq!(
                generations["by_status"][status], want,
                "{what}: generations {status}: {usage:#}"
            );
        }
        assert_eq!(
            generations["total"],
            self.generations.values().sum::<u64>(),
            "{what}"
        );
        assert_eq!(generations["images"], self.images, "{what}");
        assert_eq!(
            generations["estimated_cost_usd"], self.generation_estimate,
            "{what}"
        );
        assert_eq!(
            generations["actual_cost_usd"],
            json!(self.generation_actual),
            "{what}"
        );
        assert_eq!(
            usage["estimated_cost_usd"],
            round(self.training_estimate + self.generation_estimate),
            "{what}"
        );
        assert_eq!(
            usage["actual_cost_usd"],
            json!(add(self.training_actual, self.generation_actual)),
            "{what}"
        );
    }
}

async fn usage(app: &TestApp, key: &str, query: &str) -> Value {
    let response = app
        .request_as(key, Method::GET, &format!("/usage{query}"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200, "GET /usage{query}");
    response.json().await.unwrap()
}

async fn list(app: &TestApp, path: &str) -> Vec<Value> {
    let page = app.get_json(&format!("{path}?limit=100")).await;
    page["items"].as_array().unwrap().clone()
}

/// Trains a fresh `character` avatar with the app's current key; returns its id once trained.
async fn trained_avatar(app: &TestApp) -> String {
    let avatar = app.avatar_with_photos(10).await;
    app.start_training(&avatar, json!({"preset": "fast"})).await;
    app.wait_for_json(&format!("/avatars/{avatar}"), "trained", |a| {
        a["status"] == "trained"
    })
    .await;
    avatar
}

async fn generate_and_wait(app: &TestApp, avatar: &str, body: Value) -> Value {
    let response = app
        .request(Method::POST, &format!("/avatars/{avatar}/generations"))
        .json(&body)
        .send()
        .await
        .unwrap();
    let started: Value = response.json().await.unwrap();
    let id = started["id"].as_str().expect("a generation");
    app.wait_for_json(
        &format!("/generations/{id}"),
        "a finished generation",
        |g| ["succeeded", "failed", "partially_succeeded"].contains(&g["status"].as_str().unwrap()),
    )
    .await
}

fn failing(status: u16, error_type: &str) -> RequestFaults {
    RequestFaults {
        fail: Some(FailSpec {
            status,
            error: "fal could not do it".into(),
            error_type: error_type.into(),
            body: (status == 422).then(|| {
                json!({"detail": [{"loc": ["body", "prompt"], "msg": "rejected", "type": error_type}]})
            }),
        }),
        ..RequestFaults::default()
    }
}

/// fal's callback carries no result, so the service fetches it, and with it the billed units.
fn without_payload() -> RequestFaults {
    RequestFaults {
        webhook: WebhookFaults {
            null_payload: true,
            ..WebhookFaults::default()
        },
        ..RequestFaults::default()
    }
}

#[sqlx::test(migrator = "store::MIGRATOR")]
async fn usage_matches_the_jobs_it_counts(pool: PgPool) {
    let mut app = TestApp::spawn_with_fal(pool.clone(), FalOptions::default()).await;
    let sim = app.sim.clone().unwrap();
    let key_a = app.key.clone();
    let key_b = app.new_key("tenant-b").await;

    // Tenant A. A training whose result is fetched (fal's callback carries none), so fal's
    // billed units are known; and one fal fails.
    sim.fault_next_requests(
        1,
        Some("fal-ai/flux-lora-portrait-trainer"),
        without_payload(),
    );
    let avatar = trained_avatar(&app).await;
    let doomed = app.avatar_with_photos(10).await;
    sim.fault_next_requests(1, None, failing(500, "runner_disconnected"));
    let failed = app.start_training(&doomed, json!({"preset": "fast"})).await;
    app.wait_for_json(
        &format!("/trainings/{}", failed["id"].as_str().unwrap()),
        "a failed training",
        |t| t["status"] == "failed",
    )
    .await;

    // Generations: succeeded (2 images), failed, partially succeeded, and one whose result is
    // fetched with its billed units.
    let ok = generate_and_wait(&app, &avatar, json!({"prompt": "a", "num_images": 2})).await;
    assert_eq!(ok["status"], "succeeded");
    sim.fault_next_requests(
        1,
        Some("fal-ai/flux-lora"),
        failing(422, "content_policy_violation"),
    );
    let rejected = generate_and_wait(&app, &avatar, json!({"prompt": "b"})).await;
    assert_eq!(rejected["status"], "failed");
    sim.fault_next_requests(
        1,
        Some("fal-ai/flux-lora"),
        failing(422, "content_policy_violation"),
    );
    let partial = generate_and_wait(&app, &avatar, json!({"prompts": ["c", "d"]})).await;
    assert_eq!(partial["status"], "partially_succeeded");
    sim.fault_next_requests(1, Some("fal-ai/flux-lora"), without_payload());
    let fetched = generate_and_wait(&app, &avatar, json!({"prompt": "e", "num_images": 3})).await;
    assert_eq!(fetched["status"], "succeeded");

    // Tenant B trains an avatar of its own: none of it shows in A's usage.
    app.key = key_b.clone();
    let avatar_b = trained_avatar(&app).await;
    generate_and_wait(&app, &avatar_b, json!({"prompt": "f"})).await;
    app.key = key_a.clone();

    // The failed training moves to the last microsecond of the day before: it counts there.
    sqlx::query(
        "UPDATE jobs SET created_at = date_trunc('day', created_at AT TIME ZONE 'UTC') AT TIME ZONE 'UTC'
             - interval '1 microsecond'
         WHERE id = $1",
    )
    .bind(uuid::Uuid::parse_str(failed["id"].as_str().unwrap()).unwrap())
    .execute(&pool)
    .await
    .unwrap();

    // What fal billed, from the simulator: the units of the requests whose results were fetched.
    let billed = |request_id: &Value| {
        sim.request(request_id.as_str().unwrap())
            .unwrap()
            .billable_units
            .expect("fal billed the request") as f64
    };

    // The expectation, from what the API lists.
    let mut totals = Expected::default();
    let mut days: BTreeMap<NaiveDate, Expected> = BTreeMap::new();
    for avatar_id in [&avatar, &doomed] {
        for training in list(&app, &format!("/avatars/{avatar_id}/trainings")).await {
            let actual =
                (avatar_id == &avatar).then(|| round(billed(&training["fal_request_id"]) * 0.0024));
            totals.training(&training, actual);
            days.entry(day_of(&training))
                .or_default()
                .training(&training, actual);
        }
    }
    let generations = list(&app, &format!("/avatars/{avatar}/generations")).await;
    assert_eq!(generations.len(), 4);
    for generation in &generations {
        let actual = (generation["id"] == fetched["id"])
            .then(|| round(billed(&generation["items"][0]["fal_request_id"]) * 0.035));
        totals.generation(generation, actual);
        days.entry(day_of(generation))
            .or_default()
            .generation(generation, actual);
    }
    assert_eq!(totals.trainings.values().sum::<u64>(), 2);
    assert_eq!(totals.images, 2 + 1 + 3);
    assert_eq!(days.len(), 2, "the moved training has a day of its own");

    // A job of a deleted avatar still counts.
    let deleted = app
        .request(Method::DELETE, &format!("/avatars/{doomed}"))
        .send()
        .await
        .unwrap();
    assert!(deleted.status().is_success(), "{}", deleted.status());

    let first = *days.keys().next().unwrap();
    let last = *days.keys().last().unwrap();
    let report = usage(&app, &key_a, &format!("?from={first}&to={last}")).await;
    assert_eq!(report["from"], first.to_string());
    assert_eq!(report["to"], last.to_string());
    totals.check(&report["totals"], "totals");
    let listed = report["days"].as_array().unwrap();
    assert_eq!(listed.len() as i64, (last - first).num_days() + 1);
    for day in listed {
        let date: NaiveDate = day["date"].as_str().unwrap().parse().unwrap();
        days.get(&date)
            .cloned()
            .unwrap_or_default()
            .check(day, &date.to_string());
    }

    // Each end of the range is a whole UTC day: the moved training alone on the first, the
    // rest on the last; the days around them are empty.
    let only_first = usage(&app, &key_a, &format!("?from={first}&to={first}")).await;
    days[&first].check(&only_first["totals"], "the first day alone");
    let only_last = usage(&app, &key_a, &format!("?from={last}&to={last}")).await;
    days[&last].check(&only_last["totals"], "the last day alone");
    let before = first - Days::new(1);
    let after = last + Days::new(1);
    for quiet in [before, after] {
        let empty = usage(&app, &key_a, &format!("?from={quiet}&to={quiet}")).await;
        Expected::default().check(&empty["totals"], "a day without jobs");
        assert_eq!(empty["days"].as_array().unwrap().len(), 1);
    }

    // Tenant B sees its own training and generation only.
    let report_b = usage(&app, &key_b, &format!("?from={first}&to={after}")).await;
    let totals_b = &report_b["totals"];
    assert_eq!(totals_b["trainings"]["total"], 1, "{totals_b:#}");
    assert_eq!(totals_b["trainings"]["by_status"]["succeeded"], 1);
    assert_eq!(totals_b["generations"]["total"], 1);
    assert_eq!(totals_b["generations"]["images"], 1);
    assert_eq!(
        totals_b["actual_cost_usd"],
        Value::Null,
        "fal's callbacks carried the results"
    );
}

#[sqlx::test(migrator = "store::MIGRATOR")]
async fn usage_refuses_bad_ranges_with_the_field_at_fault(pool: PgPool) {
    let app = TestApp::spawn_with(store::Store::new(pool), |settings| {
        settings.tenants.usage_max_range_days = 3;
    })
    .await;

    // Three days, both ends included, is the most allowed; one more is refused.
    let report = usage(&app, &app.key, "?from=2026-11-01&to=2026-11-03").await;
    let days: Vec<&str> = report["days"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["date"].as_str().unwrap())
        .collect();
    assert_eq!(days, ["2026-11-01", "2026-11-02", "2026-11-03"]);
    Expected::default().check(&report["totals"], "a tenant without jobs");

    // Without dates: the days up to today, as many as allowed (fewer than the default 30).
    let today = Utc::now().date_naive();
    let report = usage(&app, &app.key, "").await;
    assert_eq!(report["days"].as_array().unwrap().len(), 3);
    assert!(
        [today, today + Days::new(1)]
            .map(|d| d.to_string())
            .contains(&report["to"].as_str().unwrap().to_string()),
        "{report:#}"
    );

    for (query, field, code) in [
        ("?from=2026-11-01&to=2026-11-04", "to", "range_too_long"),
        ("?from=2020-01-01", "from", "range_too_long"),
        ("?from=2026-11-02&to=2026-11-01", "from", "after_to"),
        ("?from=2026-11-1&to=2026-11-02", "from", "invalid_date"),
        ("?to=2026-02-30", "to", "invalid_date"),
        ("?to=2026-11-01T00:00:00Z", "to", "invalid_date"),
        ("?from=", "from", "invalid_date"),
    ] {
        let response = app
            .request(Method::GET, &format!("/usage{query}"))
            .send()
            .await
            .unwrap();
        let (status, body) = problem(response).await;
        assert_eq!(status, 422, "{query}: {body:#}");
        assert_eq!(body["code"], "validation_failed", "{query}");
        assert_eq!(body["errors"][0]["field"], field, "{query}: {body:#}");
        assert_eq!(body["errors"][0]["location"], "query", "{query}");
        assert_eq!(body["errors"][0]["code"], code, "{query}: {body:#}");
    }

    let response = app
        .request(Method::GET, "/usage?since=2026-11-01")
        .send()
        .await
        .unwrap();
    assert_eq!(problem(response).await.0, 422);
    let response = app.client.get(app.url("/usage")).send().await.unwrap();
    assert_eq!(problem(response).await.0, 401);
}
