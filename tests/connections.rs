//! Connection hygiene: clients that never finish their headers are cut off, and while they
//! hold every connection slot a normal client is still served once they are.

use std::time::Duration;

use blackbox::TestApp;
use sqlx::PgPool;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const SLOTS: usize = 8;

/// Opens a connection that sends half a request and then stalls.
async fn slow_client(app: &TestApp) -> TcpStream {
    let mut stream = TcpStream::connect(app.addr).await.unwrap();
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: avatars\r\nX-Slow: ")
        .await
        .unwrap();
    stream
}

#[sqlx::test(migrator = "store::MIGRATOR")]
async fn slow_header_clients_are_cut_off_and_others_still_served(pool: PgPool) {
    let app = TestApp::spawn_with(store::Store::new(pool), |settings| {
        settings.http.header_read_timeout = Duration::from_secs(1);
        settings.http.max_connections = SLOTS;
    })
    .await;

    // Three times as many stalled clients as there are slots.
    let mut stalled = Vec::new();
    for _ in 0..SLOTS * 3 {
        stalled.push(slow_client(&app).await);
    }

    // A normal request gets through: stalled clients lose their slot at the header deadline.
    let answered = tokio::time::timeout(
        Duration::from_secs(30),
        app.client.get(app.url("/healthz")).send(),
    )
    .await
    .expect("a normal request is answered while slow clients try to hold every slot")
    .unwrap();
    assert_eq!(answered.status(), 200);

    // Every stalled client is disconnected by the server (it never sent its headers).
    for mut stream in stalled {
        let mut rest = Vec::new();
        tokio::time::timeout(Duration::from_secs(30), stream.read_to_end(&mut rest))
            .await
            .expect("the server closes a connection whose headers never came")
            .ok();
        let text = String::from_utf8_lossy(&rest);
        assert!(
            !text.contains("200 OK"),
            "a request without its headers is never served: {text}"
        );
    }
}
