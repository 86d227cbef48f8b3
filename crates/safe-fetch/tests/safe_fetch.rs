//! Integration tests of the fetcher. Every server here is started by the
//! test itself on 127.0.0.1; every other address in these tests must be
//! refused before any connection is attempted, which is what they assert.

mod support {
    use std::collections::HashMap;
    use std::io;
    use std::net::{IpAddr, SocketAddr};
    use std::path::PathBuf;
    use std::sync::Arc;
    use std::time::Duration;

    use axum::Router;
    use safe_fetch::{FetchError, FetchPolicy, NameResolver, ResolveFuture, SafeFetcher};

    /// A fixed name table; unknown names fail, so no test ever reaches DNS.
    pub struct TableResolver(HashMap<String, Vec<IpAddr>>);

    impl TableResolver {
        pub fn new(entries: &[(&str, &str)]) -> Self {
            let mut table: HashMap<String, Vec<IpAddr>> = HashMap::new();
            for (name, ip) in entries {
                table
                    .entry((*name).to_owned())
                    .or_default()
                    .push(ip.parse().expect("test ip parses"));
            }
            Self(table)
        }
    }

    impl NameResolver for TableResolver {
        fn resolve(&self, host: &str) -> ResolveFuture {
            let answer =
                self.0.get(host).cloned().ok_or_else(|| {
                    io::Error::new(io::ErrorKind::NotFound, "name not in test table")
                });
            Box::pin(async move { answer })
        }
    }

    /// Serves `router` on 127.0.0.1 with a port chosen by the OS.
    pub async fn serve(router: Router) -> SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind loopback test server");
        let addr = listener.local_addr().expect("local addr");
        tokio::spawn(async move {
            axum::serve(listener, router).await.expect("test server");
        });
        addr
    }

    /// Development-style policy: http allowed, `allowed` loopback servers excepted.
    pub fn dev_policy(allowed: &[SocketAddr]) -> FetchPolicy {
        FetchPolicy {
            allow_http: true,
            timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(5),
            allowed_private: allowed.to_vec(),
            ..FetchPolicy::default()
        }
    }

    pub fn fetcher(policy: FetchPolicy) -> SafeFetcher {
        let resolver = TableResolver::new(&[
            ("rebind.test", "10.0.0.1"),
            ("allowed.test", "127.0.0.1"),
            ("metadata.test", "169.254.169.254"),
            ("mixed.test", "10.0.0.1"),
            ("mixed.test", "127.0.0.1"),
        ]);
        SafeFetcher::with_resolver(policy, Arc::new(resolver)).expect("fetcher builds")
    }

    pub fn code<T: std::fmt::Debug>(result: Result<T, FetchError>) -> &'static str {
        match result {
            Ok(value) => panic!("expected an error, got {value:?}"),
            Err(err) => err.code(),
        }
    }

    pub fn temp_path(name: &str) -> PathBuf {
        std::env::temp_dir().join(format!("safe-fetch-{}-{name}", std::process::id()))
    }
}

mod servers {
    use std::net::SocketAddr;
    use std::time::Duration;

    use axum::body::Body;
    use axum::http::header::{CONTENT_TYPE, LOCATION};
    use axum::http::StatusCode;
    use axum::routing::{get, post};
    use axum::Router;

    pub const BIG_LEN: usize = 4096;

    fn redirect(
        location: String,
    ) -> impl Fn() -> std::future::Ready<(StatusCode, [(axum::http::HeaderName, String); 1])> + Clone
    {
        move || std::future::ready((StatusCode::FOUND, [(LOCATION, location.clone())]))
    }

    /// The server the tests are allowed to reach. `other` is a second
    /// loopback server that is not excepted.
    pub fn main_router(other: SocketAddr) -> Router {
        Router::new()
            .route(
                "/ok",
                get(|| async { ([(CONTENT_TYPE, "text/plain")], "hello") }),
            )
            .route("/hop", get(redirect("/ok".to_owned())))
            .route("/loop", get(redirect("/loop".to_owned())))
            .route(
                "/to-private",
                get(redirect("http://10.0.0.1/x?sig=SECRET".to_owned())),
            )
            .route(
                "/to-other-port",
                get(redirect(format!("http://127.0.0.1:{}/ok", other.port()))),
            )
            .route(
                "/to-rebind",
                get(redirect("http://rebind.test/ok".to_owned())),
            )
            .route(
                "/to-allowed-name",
                get(|headers: axum::http::HeaderMap| async move {
                    // Same excepted server, addressed by a name this time.
                    let host = headers
                        .get("host")
                        .and_then(|h| h.to_str().ok())
                        .unwrap_or_default();
                    let port = host.rsplit(':').next().unwrap_or_default();
                    (
                        StatusCode::FOUND,
                        [(LOCATION, format!("http://allowed.test:{port}/ok"))],
                    )
                }),
            )
            .route("/to-file", get(redirect("file:///etc/passwd".to_owned())))
            .route("/big", get(|| async { vec![b'a'; BIG_LEN] }))
            .route(
                "/big-chunked",
                get(|| async {
                    // No Content-Length: the cap must hold while streaming.
                    let chunks = (0..16).map(|_| Ok::<_, std::io::Error>(vec![b'b'; 512]));
                    Body::from_stream(futures_util::stream::iter(chunks))
                }),
            )
            .route(
                "/slow",
                get(|| async {
                    // The behaviour under test: a server slower than the timeout.
                    tokio::time::sleep(Duration::from_secs(30)).await;
                    "late"
                }),
            )
            .route(
                "/hook",
                post(|| async {
                    (
                        StatusCode::TEMPORARY_REDIRECT,
                        [(LOCATION, "http://10.0.0.1/steal")],
                        "moved",
                    )
                }),
            )
            .route(
                "/hook-ok",
                post(|body: String| async move { (StatusCode::ACCEPTED, body) }),
            )
    }

    /// A second loopback server that no policy in these tests excepts.
    pub fn other_router() -> Router {
        Router::new().route("/ok", get(|| async { "other" }))
    }
}

mod refusals {
    use crate::servers::{main_router, other_router};
    use crate::support::{code, dev_policy, fetcher, serve};

    #[tokio::test]
    async fn forbidden_ip_literals_and_spellings_are_refused() {
        let fetcher = fetcher(dev_policy(&[]));
        for url in [
            "http://127.0.0.1/",
            "http://[::1]/",
            "http://169.254.169.254/",
            "http://[::ffff:169.254.169.254]/",
            "http://0x7f000001/",
            "http://2130706433/",
            "http://0177.0.0.1/",
            "http://127.1/",
            "http://127.0.0.1./",
            "http://[::ffff:7f00:1]/",
            "http://10.0.0.1/",
            "http://100.64.0.1/",
            "http://[fd00::1]/",
            "http://0.0.0.0/",
            "http://[::]/",
            "http://[64:ff9b::a9fe:a9fe]/",
        ] {
            assert_eq!(code(fetcher.check_url(url)), "forbidden_address", "{url}");
            assert_eq!(
                code(fetcher.fetch_bytes(url).await),
                "forbidden_address",
                "{url}"
            );
        }
    }

    #[tokio::test]
    async fn localhost_is_refused() {
        let fetcher = fetcher(dev_policy(&[]));
        for url in [
            "http://localhost/",
            "http://LOCALHOST./",
            "http://a.localhost/",
        ] {
            assert_eq!(
                code(fetcher.fetch_bytes(url).await),
                "forbidden_address",
                "{url}"
            );
        }
    }

    #[tokio::test]
    async fn names_resolving_to_forbidden_addresses_are_refused() {
        let fetcher = fetcher(dev_policy(&[]));
        assert_eq!(
            code(fetcher.fetch_bytes("http://rebind.test/").await),
            "forbidden_address"
        );
        assert_eq!(
            code(fetcher.fetch_bytes("http://metadata.test/latest/").await),
            "forbidden_address"
        );
        assert_eq!(
            code(fetcher.fetch_bytes("http://mixed.test/").await),
            "forbidden_address"
        );
    }

    #[tokio::test]
    async fn unknown_names_fail_dns() {
        let fetcher = fetcher(dev_policy(&[]));
        assert_eq!(
            code(fetcher.fetch_bytes("http://unknown.test/").await),
            "dns_failed"
        );
    }

    #[tokio::test]
    async fn userinfo_is_refused() {
        let fetcher = fetcher(dev_policy(&[]));
        for url in [
            "https://u@evil@host/",
            "https://user:pass@host/",
            "https://user@host/",
            "https://:pass@host/",
        ] {
            assert_eq!(
                code(fetcher.check_url(url)),
                "userinfo_not_allowed",
                "{url}"
            );
            assert_eq!(
                code(fetcher.fetch_bytes(url).await),
                "userinfo_not_allowed",
                "{url}"
            );
        }
    }

    #[tokio::test]
    async fn other_schemes_are_refused() {
        let fetcher = fetcher(dev_policy(&[]));
        for url in [
            "file:///etc/passwd",
            "ftp://example.test/file",
            "gopher://example.test/",
            "data:text/plain,hello",
        ] {
            assert_eq!(code(fetcher.check_url(url)), "scheme_not_allowed", "{url}");
            assert_eq!(
                code(fetcher.fetch_bytes(url).await),
                "scheme_not_allowed",
                "{url}"
            );
        }
        assert_eq!(code(fetcher.check_url("not a url")), "invalid_url");
    }

    #[tokio::test]
    async fn http_is_refused_unless_allowed() {
        let server = serve(main_router(serve(other_router()).await)).await;
        let mut policy = dev_policy(&[server]);
        policy.allow_http = false;
        let fetcher = fetcher(policy);
        let url = format!("http://{server}/ok");
        assert_eq!(code(fetcher.fetch_bytes(&url).await), "scheme_not_allowed");
    }

    #[tokio::test]
    async fn excepted_ip_is_refused_on_another_port() {
        let other = serve(other_router()).await;
        let server = serve(main_router(other)).await;
        let fetcher = fetcher(dev_policy(&[server]));
        let url = format!("http://127.0.0.1:{}/ok", other.port());
        assert_eq!(code(fetcher.fetch_bytes(&url).await), "forbidden_address");
        let by_name = format!("http://allowed.test:{}/ok", other.port());
        assert_eq!(
            code(fetcher.fetch_bytes(&by_name).await),
            "forbidden_address"
        );
    }
}

mod redirects {
    use crate::servers::{main_router, other_router};
    use crate::support::{code, dev_policy, fetcher, serve};
    use safe_fetch::FetchError;

    #[tokio::test]
    async fn redirect_to_private_address_is_refused() {
        let server = serve(main_router(serve(other_router()).await)).await;
        let fetcher = fetcher(dev_policy(&[server]));
        let err = fetcher
            .fetch_bytes(&format!("http://{server}/to-private"))
            .await
            .expect_err("redirect to 10.0.0.1 must be refused");
        assert_eq!(err.code(), "redirect_refused");
        match &err {
            FetchError::RedirectRefused { reason, .. } => {
                assert_eq!(reason.code(), "forbidden_address")
            }
            other => panic!("unexpected {other:?}"),
        }
        assert!(
            !err.to_string().contains("SECRET"),
            "message leaks query: {err}"
        );
    }

    #[tokio::test]
    async fn redirect_to_other_loopback_port_is_refused() {
        let server = serve(main_router(serve(other_router()).await)).await;
        let fetcher = fetcher(dev_policy(&[server]));
        let url = format!("http://{server}/to-other-port");
        assert_eq!(code(fetcher.fetch_bytes(&url).await), "redirect_refused");
    }

    #[tokio::test]
    async fn redirect_to_name_resolving_privately_is_refused() {
        let server = serve(main_router(serve(other_router()).await)).await;
        let fetcher = fetcher(dev_policy(&[server]));
        let url = format!("http://{server}/to-rebind");
        assert_eq!(code(fetcher.fetch_bytes(&url).await), "forbidden_address");
    }

    #[tokio::test]
    async fn redirect_to_file_scheme_is_not_followed() {
        let server = serve(main_router(serve(other_router()).await)).await;
        let fetcher = fetcher(dev_policy(&[server]));
        let url = format!("http://{server}/to-file");
        // reqwest does not treat a non-http Location as a redirect at all,
        // so the 302 itself comes back as a failure status.
        let err = fetcher
            .fetch_bytes(&url)
            .await
            .expect_err("a file: redirect must never be followed");
        assert_eq!(err.code(), "http_status", "{err:?}");
    }

    #[tokio::test]
    async fn redirect_limits_are_enforced() {
        let server = serve(main_router(serve(other_router()).await)).await;
        let looping = format!("http://{server}/loop");
        assert_eq!(
            code(fetcher(dev_policy(&[server])).fetch_bytes(&looping).await),
            "too_many_redirects"
        );
        let mut policy = dev_policy(&[server]);
        policy.max_redirects = 0;
        let hop = format!("http://{server}/hop");
        assert_eq!(
            code(fetcher(policy).fetch_bytes(&hop).await),
            "too_many_redirects"
        );
    }
}

mod allowed {
    use crate::servers::{main_router, other_router};
    use crate::support::{dev_policy, fetcher, serve, temp_path};

    #[tokio::test]
    async fn permitted_origin_is_fetched() {
        let server = serve(main_router(serve(other_router()).await)).await;
        let fetcher = fetcher(dev_policy(&[server]));
        let (body, fetched) = fetcher
            .fetch_bytes(&format!("http://{server}/ok"))
            .await
            .expect("excepted loopback server is reachable");
        assert_eq!(&body[..], b"hello");
        assert_eq!(fetched.bytes, 5);
        assert_eq!(fetched.content_type.as_deref(), Some("text/plain"));
    }

    #[tokio::test]
    async fn redirect_within_permitted_origin_is_followed() {
        let server = serve(main_router(serve(other_router()).await)).await;
        let fetcher = fetcher(dev_policy(&[server]));
        let (body, fetched) = fetcher
            .fetch_bytes(&format!("http://{server}/hop"))
            .await
            .expect("same-origin redirect is followed");
        assert_eq!(&body[..], b"hello");
        assert_eq!(fetched.final_url.path(), "/ok");
    }

    #[tokio::test]
    async fn redirect_to_excepted_address_by_name_is_followed() {
        let server = serve(main_router(serve(other_router()).await)).await;
        let fetcher = fetcher(dev_policy(&[server]));
        let (body, fetched) = fetcher
            .fetch_bytes(&format!("http://{server}/to-allowed-name"))
            .await
            .expect("redirect hop port reaches the resolver");
        assert_eq!(&body[..], b"hello");
        assert_eq!(fetched.final_url.host_str(), Some("allowed.test"));
    }

    #[tokio::test]
    async fn excepted_address_is_reachable_by_name() {
        let server = serve(main_router(serve(other_router()).await)).await;
        let fetcher = fetcher(dev_policy(&[server]));
        let url = format!("http://allowed.test:{}/ok", server.port());
        let (body, _) = fetcher
            .fetch_bytes(&url)
            .await
            .expect("name resolving to the excepted address is reachable");
        assert_eq!(&body[..], b"hello");
    }

    #[tokio::test]
    async fn body_is_streamed_to_file() {
        let server = serve(main_router(serve(other_router()).await)).await;
        let fetcher = fetcher(dev_policy(&[server]));
        let path = temp_path("streamed");
        let fetched = fetcher
            .fetch_to_file(&format!("http://{server}/big"), &path)
            .await
            .expect("fetch to file");
        let written = std::fs::read(&path).expect("file written");
        std::fs::remove_file(&path).expect("clean up");
        assert_eq!(fetched.bytes, written.len() as u64);
        assert_eq!(written.len(), crate::servers::BIG_LEN);
    }
}

mod limits {
    use std::time::Duration;

    use crate::servers::{main_router, other_router};
    use crate::support::{code, dev_policy, fetcher, serve, temp_path};

    #[tokio::test]
    async fn body_over_limit_with_content_length_is_refused() {
        let server = serve(main_router(serve(other_router()).await)).await;
        let mut policy = dev_policy(&[server]);
        policy.max_bytes = 1000;
        let fetcher = fetcher(policy);
        let url = format!("http://{server}/big");
        assert_eq!(code(fetcher.fetch_bytes(&url).await), "too_large");
        let path = temp_path("too-large");
        assert_eq!(code(fetcher.fetch_to_file(&url, &path).await), "too_large");
        assert!(!path.exists());
    }

    #[tokio::test]
    async fn body_over_limit_without_content_length_is_refused() {
        let server = serve(main_router(serve(other_router()).await)).await;
        let mut policy = dev_policy(&[server]);
        policy.max_bytes = 1000;
        let fetcher = fetcher(policy);
        let url = format!("http://{server}/big-chunked");
        assert_eq!(code(fetcher.fetch_bytes(&url).await), "too_large");
        let path = temp_path("too-large-chunked");
        assert_eq!(code(fetcher.fetch_to_file(&url, &path).await), "too_large");
        assert!(!path.exists(), "partial file is removed");
    }

    #[tokio::test]
    async fn slow_server_hits_the_timeout() {
        let server = serve(main_router(serve(other_router()).await)).await;
        let mut policy = dev_policy(&[server]);
        policy.timeout = Duration::from_millis(300);
        let fetcher = fetcher(policy);
        let url = format!("http://{server}/slow");
        assert_eq!(code(fetcher.fetch_bytes(&url).await), "timeout");
    }

    #[tokio::test]
    async fn error_status_is_reported() {
        let server = serve(main_router(serve(other_router()).await)).await;
        let fetcher = fetcher(dev_policy(&[server]));
        let err = fetcher
            .fetch_bytes(&format!("http://{server}/missing"))
            .await
            .expect_err("404 is an error");
        assert!(matches!(
            err,
            safe_fetch::FetchError::HttpStatus { status: 404 }
        ));
        assert_eq!(err.code(), "http_status");
    }
}

mod posting {
    use safe_fetch::{Bytes, HeaderMap, StatusCode};

    use crate::servers::{main_router, other_router};
    use crate::support::{code, dev_policy, fetcher, serve};

    #[tokio::test]
    async fn post_returns_redirect_without_following() {
        let server = serve(main_router(serve(other_router()).await)).await;
        let fetcher = fetcher(dev_policy(&[server]));
        let response = fetcher
            .post(
                &format!("http://{server}/hook"),
                HeaderMap::new(),
                Bytes::from_static(b"{}"),
            )
            .await
            .expect("3xx is a response, not an error");
        assert_eq!(response.status, StatusCode::TEMPORARY_REDIRECT);
        assert_eq!(
            response
                .headers
                .get("location")
                .and_then(|v| v.to_str().ok()),
            Some("http://10.0.0.1/steal")
        );
        assert_eq!(&response.body_snippet[..], b"moved");
    }

    #[tokio::test]
    async fn post_delivers_body_and_headers() {
        let server = serve(main_router(serve(other_router()).await)).await;
        let fetcher = fetcher(dev_policy(&[server]));
        let mut headers = HeaderMap::new();
        headers.insert("content-type", "application/json".parse().expect("header"));
        let response = fetcher
            .post(
                &format!("http://{server}/hook-ok"),
                headers,
                Bytes::from_static(b"{\"event\":\"done\"}"),
            )
            .await
            .expect("post succeeds");
        assert_eq!(response.status, StatusCode::ACCEPTED);
        assert_eq!(&response.body_snippet[..], b"{\"event\":\"done\"}");
    }

    #[tokio::test]
    async fn post_to_forbidden_address_is_refused() {
        let fetcher = fetcher(dev_policy(&[]));
        let result = fetcher
            .post("http://10.0.0.1/hook", HeaderMap::new(), Bytes::new())
            .await;
        assert_eq!(code(result), "forbidden_address");
        let result = fetcher
            .post("http://rebind.test/hook", HeaderMap::new(), Bytes::new())
            .await;
        assert_eq!(code(result), "forbidden_address");
    }
}

mod loopback_receivers {
    use std::time::Duration;

    use safe_fetch::{Bytes, FetchPolicy, HeaderMap, StatusCode};

    use crate::servers::{main_router, other_router};
    use crate::support::{code, fetcher, serve};

    /// A developer's machine: https only in general, but a receiver on this machine allowed.
    fn loopback_policy(allow_loopback: bool) -> FetchPolicy {
        FetchPolicy {
            allow_loopback,
            timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(5),
            max_redirects: 0,
            ..FetchPolicy::default()
        }
    }

    #[tokio::test]
    async fn loopback_receivers_over_http_are_reached_when_allowed() {
        let server = serve(main_router(serve(other_router()).await)).await;
        let fetcher = fetcher(loopback_policy(true));
        for url in [
            format!("http://127.0.0.1:{}/hook-ok", server.port()),
            format!("http://localhost:{}/hook-ok", server.port()),
        ] {
            let response = fetcher
                .post(&url, HeaderMap::new(), Bytes::from_static(b"ping"))
                .await
                .unwrap_or_else(|e| panic!("{url}: {e}"));
            assert_eq!(response.status, StatusCode::ACCEPTED, "{url}");
            assert_eq!(&response.body_snippet[..], b"ping");
        }
    }

    #[tokio::test]
    async fn allowing_loopback_opens_nothing_else() {
        let fetcher = fetcher(loopback_policy(true));
        for (url, expected) in [
            ("http://10.0.0.1/hook", "scheme_not_allowed"),
            ("https://10.0.0.1/hook", "forbidden_address"),
            ("https://169.254.169.254/latest", "forbidden_address"),
            ("https://rebind.test/hook", "forbidden_address"),
            ("http://example.test/hook", "scheme_not_allowed"),
        ] {
            let result = fetcher.post(url, HeaderMap::new(), Bytes::new()).await;
            assert_eq!(code(result), expected, "{url}");
        }
    }

    #[tokio::test]
    async fn loopback_receivers_are_refused_by_default() {
        let server = serve(main_router(serve(other_router()).await)).await;
        let fetcher = fetcher(loopback_policy(false));
        let url = format!("http://127.0.0.1:{}/hook-ok", server.port());
        assert_eq!(code(fetcher.check_url(&url)), "scheme_not_allowed");
        let result = fetcher.post(&url, HeaderMap::new(), Bytes::new()).await;
        assert_eq!(code(result), "scheme_not_allowed");
        let https = format!("https://127.0.0.1:{}/hook-ok", server.port());
        assert_eq!(code(fetcher.check_url(&https)), "forbidden_address");
    }
}
