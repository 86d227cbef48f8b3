use std::time::Duration;

use blackbox::browser::Browser;
use blackbox::{images, TestApp};
use fantoccini::{Client, Locator};
use serde_json::Value;
use sha2::{Digest, Sha256};
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

    authorize(client, &app.key).await;

    // Try it out on GET /avatars.
    let block = "#operations-avatars-list_avatars";
    try_it_out(client, block).await;
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

/// Authorizes Swagger UI with the API key, through its Authorize dialog.
async fn authorize(client: &Client, key: &str) {
    client
        .wait()
        .at_most(WAIT)
        .for_element(Locator::Css("button.authorize"))
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
    input.send_keys(key).await.unwrap();
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
}

/// Expands the operation `block` and switches it to "Try it out".
async fn try_it_out(client: &Client, block: &str) {
    client
        .wait()
        .at_most(WAIT)
        .for_element(Locator::Css(&format!("{block} .opblock-summary-control")))
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
}

/// A person uploads a photo from disk with "Try it out" on `POST /avatars/{id}/photos`: the
/// multipart body offers a file picker, and the photo is stored.
#[sqlx::test(migrator = "store::MIGRATOR")]
async fn swagger_ui_uploads_a_photo_with_try_it_out(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let avatar = app
        .create_avatar(serde_json::json!({"name": "photos from swagger", "kind": "character"}))
        .await;
    let avatar_id = avatar["id"].as_str().unwrap().to_string();
    let bytes = images::jpeg(4242);
    let photo = tempfile::Builder::new()
        .prefix("swagger-photo-")
        .suffix(".jpg")
        .tempfile()
        .unwrap();
    std::fs::write(photo.path(), &bytes).unwrap();
    let file_name = photo
        .path()
        .file_name()
        .unwrap()
        .to_str()
        .unwrap()
        .to_string();

    let browser = Browser::start().await;
    let client = &browser.client;
    client.goto(&app.url("/docs/")).await.unwrap();
    authorize(client, &app.key).await;

    let block = "#operations-photos-add_photos";
    try_it_out(client, block).await;
    client
        .wait()
        .at_most(WAIT)
        .for_element(Locator::Css(&format!(
            "{block} tr[data-param-name='id'] input"
        )))
        .await
        .unwrap()
        .send_keys(&avatar_id)
        .await
        .unwrap();
    // The JSON alternative is documented too: pick the multipart body.
    client
        .wait()
        .at_most(WAIT)
        .for_element(Locator::Css(&format!(
            "{block} .body-param-content-type select"
        )))
        .await
        .unwrap()
        .select_by_value("multipart/form-data")
        .await
        .unwrap();
    // The `files` array: a file input per item, once there is an item.
    let files = format!("{block} tr[data-property-name='files']");
    let add_item = client
        .wait()
        .at_most(WAIT)
        .for_element(Locator::Css(&format!(
            "{files} button.json-schema-form-item-add"
        )))
        .await
        .unwrap();
    let file_input = format!("{files} input[type='file']");
    if client
        .find_all(Locator::Css(&file_input))
        .await
        .unwrap()
        .is_empty()
    {
        add_item.click().await.unwrap();
    }
    client
        .wait()
        .at_most(WAIT)
        .for_element(Locator::Css(&file_input))
        .await
        .unwrap()
        .send_keys(photo.path().to_str().unwrap())
        .await
        .unwrap();
    client
        .find(Locator::Css(&format!("{block} button.execute")))
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
    let shown = client
        .find(Locator::Css(&format!(
            "{block} .live-responses-table tbody .response-col_description"
        )))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(status.trim(), "201", "{shown}");
    assert!(shown.contains(&file_name), "{shown}");
    browser.close().await;

    let response = app
        .request(
            reqwest::Method::GET,
            &format!("/avatars/{avatar_id}/photos"),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let list: Value = response.json().await.unwrap();
    let items = list["items"].as_array().unwrap();
    assert_eq!(items.len(), 1, "{list}");
    assert_eq!(items[0]["file_name"], file_name.as_str(), "{list}");
    assert_eq!(items[0]["format"], "jpeg", "{list}");
    assert_eq!(items[0]["bytes"], bytes.len() as u64, "{list}");
    assert_eq!(
        items[0]["sha256"],
        hex::encode(Sha256::digest(&bytes)).as_str(),
        "{list}"
    );
}
