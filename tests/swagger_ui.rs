use std::time::Duration;

use blackbox::browser::Browser;
use blackbox::TestApp;
use fantoccini::Locator;
use sqlx::PgPool;

const WAIT: Duration = Duration::from_secs(30);

/// A person opens Swagger UI, authorizes with a key and tries `GET /avatars`.
#[sqlx::test(migrator = "store::MIGRATOR")]
async fn swagger_ui_lists_the_operations_and_try_it_out_works(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    app.create_avatar(serde_json::json!({"name": "shown in swagger", "kind": "character"}))
        .await;
    let browser = Browser::start().await;
    let client = &browser.client;

    client.goto(&app.url("/docs/")).await.unwrap();
    for operation in [
        "create_avatar",
        "list_avatars",
        "get_avatar",
        "update_avatar",
        "delete_avatar",
    ] {
        client
            .wait()
            .at_most(WAIT)
            .for_element(Locator::Css(&format!("#operations-avatars-{operation}")))
            .await
            .unwrap_or_else(|e| panic!("operation {operation} listed: {e}"));
    }

    // Authorize with the API key.
    client
        .find(Locator::Css("button.authorize"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let input = client
        .wait()
        .at_most(WAIT)
        .for_element(Locator::Css(".auth-container input"))
        .await
        .unwrap();
    input.send_keys(&app.key).await.unwrap();
    client
        .find(Locator::Css(
            ".auth-container .auth-btn-wrapper button.authorize",
        ))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    client
        .find(Locator::Css(
            ".auth-container .auth-btn-wrapper button.btn-done",
        ))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();

    // Try it out on GET /avatars.
    let block = "#operations-avatars-list_avatars";
    client
        .find(Locator::Css(&format!("{block} .opblock-summary-control")))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    client
        .wait()
        .at_most(WAIT)
        .for_element(Locator::Css(&format!("{block} button.try-out__btn")))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    client
        .wait()
        .at_most(WAIT)
        .for_element(Locator::Css(&format!("{block} button.execute")))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let status = client
        .wait()
        .at_most(WAIT)
        .for_element(Locator::Css(&format!(
            "{block} .live-responses-table .response .response-col_status"
        )))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(status.trim(), "200");
    let body = client
        .find(Locator::Css(&format!(
            "{block} .live-responses-table tbody .response-col_description"
        )))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(body.contains("shown in swagger"), "{body}");
    browser.close().await;
}
