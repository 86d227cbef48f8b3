//! Rolling updates lose nothing: a stopping replica reports itself not ready at once, keeps
//! answering until its listener closes, and hands back the leases it holds.

use std::time::Duration;

use blackbox::{FalOptions, TestApp};
use fal_sim::RequestFaults;
use reqwest::Method;
use serde_json::{json, Value};
use sqlx::PgPool;

#[sqlx::test(migrator = "store::MIGRATOR")]
async fn a_stopping_replica_is_not_ready_at_once_and_answers_until_it_closes(pool: PgPool) {
    let mut app = TestApp::spawn_with(store::Store::new(pool), |settings| {
        settings.shutdown.delay = Duration::from_secs(3);
    })
    .await;
    let ready = app.client.get(app.url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 200);

    app.begin_stop();
    let problem = app
        .eventually("not ready while stopping", || async {
            let response = app
                .client
                .get(app.url("/readyz"))
                .send()
                .await
                .map_err(|e| e.to_string())?;
            let status = response.status();
            let body: Value = response.json().await.map_err(|e| e.to_string())?;
            if status == 503 {
                Ok(body)
            } else {
                Err(format!("{status} {body}"))
            }
        })
        .await;
    assert_eq!(problem["code"], "not_ready");
    assert!(
        problem["reasons"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r == "shutting down"),
        "{problem:#}"
    );
    // Requests are still served during the hand-over delay.
    let alive = app.client.get(app.url("/healthz")).send().await.unwrap();
    assert_eq!(alive.status(), 200);
    app.stop().await;
}

#[sqlx::test(migrator = "store::MIGRATOR")]
async fn a_clean_stop_hands_back_the_leases_it_holds(pool: PgPool) {
    // Whatever is in hand when the stop comes is given up after a second.
    let app = TestApp::spawn_with_fal_and(pool.clone(), FalOptions::default(), |settings| {
        settings.shutdown.worker_grace = Duration::from_secs(1);
    })
    .await;
    let avatar = app.avatar_with_photos(10).await;
    app.sim.as_ref().unwrap().fault_next_requests(
        1,
        None,
        RequestFaults {
            stall: true,
            ..Default::default()
        },
    );
    let started: Value = app
        .request(Method::POST, &format!("/avatars/{avatar}/train"))
        .json(&json!({}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id: uuid::Uuid = started["id"].as_str().unwrap().parse().unwrap();
    app.wait_for_json(&format!("/trainings/{id}"), "submitted", |t| {
        t["status"] == "submitted"
    })
    .await;
    // This replica is in the middle of work on the job (a status check, say): it holds the
    // job's lease for longer than anyone would wait.
    sqlx::query(
        "UPDATE jobs SET lease_owner = $2, lease_until = now() + interval '1 hour' WHERE id = $1",
    )
    .bind(id)
    .bind(app.worker_id())
    .execute(&pool)
    .await
    .unwrap();

    // The pool the service shares is taken to the last connection while it stops (as when
    // other work on the same pool holds every connection): handing back must not wait for one.
    let mut taken = Vec::new();
    for _ in 0..pool.options().get_max_connections() {
        taken.push(pool.acquire().await.unwrap());
    }
    app.stop().await;
    drop(taken);

    let (handed_back, lease): (bool, String) = sqlx::query_as(
        "SELECT lease_until <= now(),
                format('owner %s until %s (now %s), status %s, fence %s',
                       lease_owner, lease_until, now(), status, fence)
         FROM jobs WHERE id = $1",
    )
    .bind(id)
    .fetch_one(&pool)
    .await
    .unwrap();
    assert!(
        handed_back,
        "another replica may take the job over at once: {lease}"
    );
}
