//! The HTTP layer driven in-process through axum routers with `tower::ServiceExt::oneshot`.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use axum::body::Body;
use axum::http::header::{CONTENT_TYPE, LOCATION};
use axum::http::{HeaderMap, Method, Request, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use bytes::Bytes;
use http_body_util::BodyExt;
use idem::http::{
    record_key, IdempotencyLayer, IdempotencyLayerBuilder, ResponsePolicy, StatusClass,
};
use idem::{
    CallOptions, CheckOutcome, DeleteReply, Error, Fingerprint, Idempotency, IdempotencyService,
    Key, Lease, MemoryStore, Record, RecordState, StoreError,
};
use serde_json::{json, Value};
use tokio::sync::Notify;
use tower::ServiceExt;

/// What a client received.
#[derive(Debug, Clone, PartialEq)]
struct Sent {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
}

impl Sent {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(|v| v.to_str().unwrap())
    }

    fn replayed(&self) -> bool {
        match self.header("idempotent-replayed") {
            Some("true") => true,
            None => false,
            Some(other) => panic!("Idempotent-Replayed is {other:?}"),
        }
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap()
    }
}

async fn send(app: &Router, request: Request<Body>) -> Sent {
    let response = app.clone().oneshot(request).await.unwrap();
    let (parts, body) = response.into_parts();
    Sent {
        status: parts.status,
        headers: parts.headers,
        body: body.collect().await.unwrap().to_bytes(),
    }
}

fn request(method: Method, uri: &str, key: Option<&str>, body: &str) -> Request<Body> {
    let mut builder = Request::builder()
        .method(method)
        .uri(uri)
        .header(CONTENT_TYPE, "application/json");
    if let Some(key) = key {
        builder = builder.header("idempotency-key", key);
    }
    builder.body(Body::from(body.to_owned())).unwrap()
}

fn post_json(uri: &str, key: &str, body: &str) -> Request<Body> {
    request(Method::POST, uri, Some(key), body)
}

fn runs() -> Arc<AtomicUsize> {
    Arc::new(AtomicUsize::new(0))
}

/// A POST route at `path` that counts its runs and answers 201 with the run number.
fn counting_route(path: &str, runs: &Arc<AtomicUsize>) -> Router {
    let runs = Arc::clone(runs);
    Router::new().route(
        path,
        post(move || {
            let run = runs.fetch_add(1, Ordering::SeqCst) + 1;
            async move { (StatusCode::CREATED, Json(json!({ "run": run }))) }
        }),
    )
}

fn assert_problem(sent: &Sent, status: u16, name: &str) {
    assert_eq!(sent.status.as_u16(), status, "{name}: {:?}", sent.body);
    assert_eq!(
        sent.header("content-type"),
        Some("application/problem+json")
    );
    let problem = sent.json();
    assert_eq!(problem["type"], format!("urn:idem:problem:{name}"));
    assert_eq!(problem["status"], status);
    assert!(problem["title"].as_str().is_some_and(|t| !t.is_empty()));
    assert!(problem["detail"].as_str().is_some_and(|d| !d.is_empty()));
}

/// A service whose store cannot be reached.
struct UnreachableStore;

#[async_trait]
impl Idempotency for UnreachableStore {
    async fn check_and_lock(
        &self,
        key: &Key,
        _: &Fingerprint,
        _: &CallOptions,
    ) -> Result<CheckOutcome, Error> {
        Err(Error::Store {
            key: key.to_string(),
            source: StoreError::Connection("connection refused".into()),
        })
    }
    async fn complete(&self, _: &Lease, _: idem::Response) -> Result<(), Error> {
        unreachable!("nothing is ever acquired")
    }
    async fn fail(&self, _: &Lease, _: idem::Response) -> Result<(), Error> {
        unreachable!("nothing is ever acquired")
    }
    async fn release(&self, _: &Lease) -> Result<(), Error> {
        unreachable!("nothing is ever acquired")
    }
    async fn renew(&self, _: &Lease) -> Result<(), Error> {
        unreachable!("nothing is ever acquired")
    }
    async fn get(&self, _: &Key) -> Result<Option<Record>, Error> {
        Ok(None)
    }
    async fn delete(&self, _: &Key, _: bool) -> Result<DeleteReply, Error> {
        Ok(DeleteReply::NotFound)
    }
}

/// A route that signals `started`, then waits for `proceed` before answering 201.
fn gated_route(started: &Arc<Notify>, proceed: &Arc<Notify>, runs: &Arc<AtomicUsize>) -> Router {
    let (started, proceed, runs) = (started.clone(), proceed.clone(), runs.clone());
    Router::new().route(
        "/slow",
        post(move || {
            let (started, proceed, runs) = (started.clone(), proceed.clone(), runs.clone());
            async move {
                let run = runs.fetch_add(1, Ordering::SeqCst) + 1;
                started.notify_one();
                proceed.notified().await;
                (StatusCode::CREATED, Json(json!({ "run": run })))
            }
        }),
    )
}

async fn in_progress_case(options: CallOptions) -> Sent {
    let (started, proceed, count) = (Arc::new(Notify::new()), Arc::new(Notify::new()), runs());
    let layer = IdempotencyLayer::builder(IdempotencyService::in_memory())
        .call_options(options)
        .build()
        .unwrap();
    let app = gated_route(&started, &proceed, &count).route_layer(layer);
    let first = tokio::spawn({
        let app = app.clone();
        async move { send(&app, post_json("/slow", "k", "{}")).await }
    });
    started.notified().await;
    let duplicate = send(&app, post_json("/slow", "k", "{}")).await;
    proceed.notify_one();
    assert_eq!(first.await.unwrap().status, StatusCode::CREATED);
    assert_eq!(count.load(Ordering::SeqCst), 1);
    duplicate
}

#[tokio::test]
async fn every_outcome_maps_to_its_documented_status() {
    type Case = (
        &'static str,
        Sent,
        u16,
        Option<&'static str>,
        Option<&'static str>,
    );
    let count = runs();
    let required = IdempotencyLayer::builder(IdempotencyService::in_memory())
        .required(true)
        .max_request_bytes(16)
        .build()
        .unwrap();
    let app = counting_route("/pay", &count).route_layer(required);

    // A recorded client error, replayed as it was.
    let rejects = runs();
    let rejecting = {
        let rejects = Arc::clone(&rejects);
        Router::new()
            .route(
                "/reject",
                post(move || {
                    rejects.fetch_add(1, Ordering::SeqCst);
                    async { (StatusCode::BAD_REQUEST, "amount must be positive") }
                }),
            )
            .route_layer(IdempotencyLayer::new(IdempotencyService::in_memory()))
    };
    let first_reject = send(&rejecting, post_json("/reject", "r", "{}")).await;

    // A response too large for the service's cap, recorded as not replayable.
    let tiny = IdempotencyService::builder(MemoryStore::new())
        .max_response_bytes(64)
        .build()
        .unwrap();
    let big = Router::new()
        .route("/export", post(|| async { "x".repeat(200) }))
        .route_layer(IdempotencyLayer::new(tiny));
    let first_export = send(&big, post_json("/export", "e", "{}")).await;
    assert_eq!(first_export.status, StatusCode::OK);
    assert_eq!(first_export.body.len(), 200);

    let unreachable =
        counting_route("/pay", &runs()).route_layer(IdempotencyLayer::new(UnreachableStore));

    let streamed_large = Request::post("/pay")
        .header("idempotency-key", "s")
        .body(Body::from_stream(futures::stream::iter([
            Ok::<_, Infallible>(Bytes::from_static(b"0123456789")),
            Ok(Bytes::from_static(b"0123456789")),
        ])))
        .unwrap();

    send(&app, post_json("/pay", "taken", r#"{"a":1}"#)).await;
    let long_key = "k".repeat(256);
    // (case, response, status, problem name, Retry-After)
    let cases: Vec<Case> = vec![
        (
            "missing key",
            send(&app, request(Method::POST, "/pay", None, "{}")).await,
            400,
            Some("missing-key"),
            None,
        ),
        (
            "unterminated quote",
            send(&app, post_json("/pay", "\"abc", "{}")).await,
            400,
            Some("malformed-key"),
            None,
        ),
        (
            "empty quoted key",
            send(&app, post_json("/pay", "\"\"", "{}")).await,
            400,
            Some("malformed-key"),
            None,
        ),
        (
            "space in bare key",
            send(&app, post_json("/pay", "a b", "{}")).await,
            400,
            Some("malformed-key"),
            None,
        ),
        (
            "parameters",
            send(&app, post_json("/pay", "\"abc\";x=1", "{}")).await,
            400,
            Some("malformed-key"),
            None,
        ),
        (
            "edge whitespace",
            send(&app, post_json("/pay", "\" abc\"", "{}")).await,
            400,
            Some("malformed-key"),
            None,
        ),
        (
            "key over 255 bytes",
            send(&app, post_json("/pay", &long_key, "{}")).await,
            400,
            Some("malformed-key"),
            None,
        ),
        (
            "body over cap",
            send(&app, post_json("/pay", "big", &"1".repeat(17))).await,
            413,
            Some("body-too-large"),
            None,
        ),
        (
            "streamed body over cap",
            send(&app, streamed_large).await,
            413,
            Some("body-too-large"),
            None,
        ),
        (
            "fingerprint mismatch",
            send(&app, post_json("/pay", "taken", r#"{"a":2}"#)).await,
            422,
            Some("fingerprint-mismatch"),
            None,
        ),
        (
            "in progress after the wait budget",
            in_progress_case(CallOptions::new().wait_timeout(Duration::from_millis(50))).await,
            409,
            Some("in-progress"),
            Some("1"),
        ),
        (
            "in progress without waiting",
            in_progress_case(CallOptions::new().wait(false)).await,
            409,
            Some("in-progress"),
            Some("30"),
        ),
        (
            "store unavailable",
            send(&unreachable, post_json("/pay", "k", "{}")).await,
            503,
            Some("store-unavailable"),
            Some("1"),
        ),
        (
            "not replayable",
            send(&big, post_json("/export", "e", "{}")).await,
            410,
            Some("not-replayable"),
            None,
        ),
        (
            "replay of a recorded failure",
            send(&rejecting, post_json("/reject", "r", "{}")).await,
            400,
            None,
            None,
        ),
        (
            "replay",
            send(&app, post_json("/pay", "taken", r#"{"a":1}"#)).await,
            201,
            None,
            None,
        ),
    ];

    for (name, sent, status, problem, retry_after) in cases {
        match problem {
            Some(problem) => assert_problem(&sent, status, problem),
            None => assert_eq!(sent.status.as_u16(), status, "{name}"),
        }
        assert_eq!(sent.header("retry-after"), retry_after, "{name}");
        assert_eq!(sent.replayed(), problem.is_none(), "{name}");
    }
    assert_eq!(count.load(Ordering::SeqCst), 1, "only the first /pay ran");
    assert_eq!(rejects.load(Ordering::SeqCst), 1, "the 400 was replayed");
    assert!(!first_reject.replayed());
    assert_eq!(
        send(&rejecting, post_json("/reject", "r", "{}")).await.body,
        first_reject.body
    );
}

#[tokio::test]
async fn replays_are_faithful_for_200_201_202_and_204() {
    let count = runs();
    let service = IdempotencyService::in_memory();
    let app = {
        let c = [count.clone(), count.clone(), count.clone(), count.clone()];
        let [c200, c201, c202, c204] = c;
        Router::new()
            .route(
                "/ok",
                post(move || {
                    let n = c200.fetch_add(1, Ordering::SeqCst);
                    async move { Json(json!({ "ok": true, "n": n })) }
                }),
            )
            .route(
                "/created",
                post(move || {
                    let n = c201.fetch_add(1, Ordering::SeqCst);
                    async move {
                        let location = format!("/things/{n}");
                        (
                            StatusCode::CREATED,
                            [(LOCATION, location)],
                            Json(json!({ "id": n })),
                        )
                    }
                }),
            )
            .route(
                "/accepted",
                post(move || {
                    let n = c202.fetch_add(1, Ordering::SeqCst);
                    async move {
                        let location = format!("/jobs/{n}");
                        (StatusCode::ACCEPTED, [(LOCATION, location)], "queued")
                    }
                }),
            )
            .route(
                "/empty",
                post(move || {
                    c204.fetch_add(1, Ordering::SeqCst);
                    async { StatusCode::NO_CONTENT }
                }),
            )
            .route_layer(IdempotencyLayer::new(service.clone()))
    };

    let expectations = [
        (
            "/ok",
            200,
            None,
            Some("application/json"),
            r#"{"n":0,"ok":true}"#,
        ),
        (
            "/created",
            201,
            Some("/things/1"),
            Some("application/json"),
            r#"{"id":1}"#,
        ),
        (
            "/accepted",
            202,
            Some("/jobs/2"),
            Some("text/plain; charset=utf-8"),
            "queued",
        ),
        ("/empty", 204, None, None, ""),
    ];
    for (route, status, location, content_type, body) in expectations {
        let first = send(&app, post_json(route, "key-1", "{}")).await;
        let replay = send(&app, post_json(route, "key-1", "{}")).await;
        for sent in [&first, &replay] {
            assert_eq!(sent.status.as_u16(), status, "{route}");
            assert_eq!(sent.header("location"), location, "{route}");
            assert_eq!(sent.header("content-type"), content_type, "{route}");
            assert_eq!(sent.body, Bytes::from(body), "{route}");
        }
        assert!(!first.replayed(), "{route}");
        assert!(replay.replayed(), "{route}");
    }
    assert_eq!(count.load(Ordering::SeqCst), 4, "each route ran once");
}

#[tokio::test]
async fn per_exchange_headers_are_neither_replayed_nor_stored() {
    let service = IdempotencyService::in_memory();
    let app = Router::new()
        .route(
            "/login",
            post(|| async {
                let mut response = Json(json!({ "session": "s1" })).into_response();
                let headers = response.headers_mut();
                headers.insert("set-cookie", "session=s1; HttpOnly".parse().unwrap());
                headers.insert("www-authenticate", "Bearer realm=\"api\"".parse().unwrap());
                headers.insert("x-ratelimit-remaining", "3".parse().unwrap());
                headers.insert("date", "Tue, 01 Jul 2025 10:00:00 GMT".parse().unwrap());
                headers.insert("x-request-id", "req-1".parse().unwrap());
                headers.insert("etag", "\"v1\"".parse().unwrap());
                headers.insert("link", "</sessions/s1>; rel=\"self\"".parse().unwrap());
                response
            }),
        )
        .route_layer(IdempotencyLayer::new(service.clone()));

    let first = send(&app, post_json("/login", "k", "{}")).await;
    let replay = send(&app, post_json("/login", "k", "{}")).await;

    assert_eq!(first.header("set-cookie"), Some("session=s1; HttpOnly"));
    assert_eq!(first.header("x-ratelimit-remaining"), Some("3"));
    let names = |sent: &Sent| -> Vec<String> {
        // Content-Length is framing that axum adds to every sized body; it is not stored.
        let mut names: Vec<String> = sent
            .headers
            .keys()
            .filter(|n| *n != "content-length")
            .map(|n| n.to_string())
            .collect();
        names.sort();
        names
    };
    assert_eq!(
        names(&replay),
        ["content-type", "etag", "idempotent-replayed", "link"]
    );
    assert_eq!(replay.header("etag"), Some("\"v1\""));
    assert_eq!(replay.body, first.body);

    let key = record_key(None, &Method::POST, "/login", "k");
    let record = service.get(&key).await.unwrap().expect("recorded");
    let RecordState::Completed { response, .. } = record.state else {
        panic!("not completed: {:?}", record.state)
    };
    let stored: BTreeMap<String, String> = response.headers.into_iter().collect();
    assert_eq!(
        stored,
        BTreeMap::from([
            ("content-type".to_owned(), "application/json".to_owned()),
            ("etag".to_owned(), "\"v1\"".to_owned()),
            ("link".to_owned(), "</sessions/s1>; rel=\"self\"".to_owned()),
        ])
    );
}

#[tokio::test]
async fn the_same_key_on_another_route_or_for_another_principal_runs_again() {
    let (a_runs, b_runs) = (runs(), runs());
    let layer = IdempotencyLayer::builder(IdempotencyService::in_memory())
        .principal(|parts: &axum::http::request::Parts| {
            // Test stand-in for an authenticated identity.
            parts
                .headers
                .get("x-user")
                .map(|v| v.to_str().unwrap().to_owned())
        })
        .build()
        .unwrap();
    let app = counting_route("/a", &a_runs)
        .merge(counting_route("/b", &b_runs))
        .route_layer(layer);
    let as_user = |uri: &str, user: &str| {
        let mut request = post_json(uri, "shared", "{}");
        request
            .headers_mut()
            .insert("x-user", user.parse().unwrap());
        request
    };

    let anonymous_a = send(&app, post_json("/a", "shared", "{}")).await;
    let anonymous_b = send(&app, post_json("/b", "shared", "{}")).await;
    let alice = send(&app, as_user("/a", "alice")).await;
    let bob = send(&app, as_user("/a", "bob")).await;
    let alice_again = send(&app, as_user("/a", "alice")).await;

    assert_eq!(a_runs.load(Ordering::SeqCst), 3);
    assert_eq!(b_runs.load(Ordering::SeqCst), 1);
    assert_eq!(anonymous_a.json(), json!({ "run": 1 }));
    assert_eq!(anonymous_b.json(), json!({ "run": 1 }));
    assert_eq!(alice.json(), json!({ "run": 2 }));
    assert_eq!(bob.json(), json!({ "run": 3 }));
    assert!(alice_again.replayed());
    assert_eq!(alice_again.json(), json!({ "run": 2 }));
}

#[tokio::test]
async fn the_same_key_on_another_path_of_one_route_is_a_mismatch() {
    let count = runs();
    let app = counting_route("/accounts/{id}/charges", &count)
        .route_layer(IdempotencyLayer::new(IdempotencyService::in_memory()));

    let first = send(&app, post_json("/accounts/1/charges", "k", "{}")).await;
    let other_account = send(&app, post_json("/accounts/2/charges", "k", "{}")).await;

    assert_eq!(first.status, StatusCode::CREATED);
    assert_problem(&other_account, 422, "fingerprint-mismatch");
    assert_eq!(count.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn json_bodies_match_by_value_and_other_bodies_by_bytes() {
    let count = runs();
    let app = counting_route("/pay", &count)
        .route_layer(IdempotencyLayer::new(IdempotencyService::in_memory()));
    let raw = |key: &str, body: &'static str| {
        Request::post("/pay")
            .header("idempotency-key", key)
            .header(CONTENT_TYPE, "text/plain")
            .body(Body::from(body))
            .unwrap()
    };

    send(
        &app,
        post_json("/pay", "j", r#"{"amount":5,"to":{"id":1,"bank":"x"}}"#),
    )
    .await;
    let reordered = send(
        &app,
        post_json(
            "/pay",
            "j",
            "{ \"to\": {\"bank\": \"x\", \"id\": 1},\n \"amount\": 5 }",
        ),
    )
    .await;
    send(&app, raw("t", r#"{"a":1,"b":2}"#)).await;
    let reordered_text = send(&app, raw("t", r#"{"b":2,"a":1}"#)).await;

    assert!(reordered.replayed());
    assert_problem(&reordered_text, 422, "fingerprint-mismatch");
    assert_eq!(count.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn quoted_and_bare_keys_name_the_same_record() {
    let count = runs();
    let app = counting_route("/pay", &count)
        .route_layer(IdempotencyLayer::new(IdempotencyService::in_memory()));

    let quoted = send(&app, post_json("/pay", "\"8e03978e-40d5\"", "{}")).await;
    let bare = send(&app, post_json("/pay", "8e03978e-40d5", "{}")).await;

    assert!(!quoted.replayed());
    assert!(bare.replayed());
    assert_eq!(bare.body, quoted.body);
    assert_eq!(count.load(Ordering::SeqCst), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_concurrent_duplicates_run_the_handler_once() {
    let count = Arc::new(AtomicUsize::new(0));
    let app = {
        let count = Arc::clone(&count);
        Router::new()
            .route(
                "/pay",
                post(move || {
                    let run = count.fetch_add(1, Ordering::SeqCst) + 1;
                    async move {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        (
                            StatusCode::CREATED,
                            [(LOCATION, "/payments/1")],
                            Json(json!({ "run": run })),
                        )
                    }
                }),
            )
            .route_layer(IdempotencyLayer::new(IdempotencyService::in_memory()))
    };

    let calls = (0..20).map(|_| send(&app, post_json("/pay", "dup", r#"{"amount":5}"#)));
    let sent = futures::future::join_all(calls).await;

    assert_eq!(count.load(Ordering::SeqCst), 1);
    for s in &sent {
        assert_eq!(s.status, StatusCode::CREATED);
        assert_eq!(s.body, Bytes::from_static(br#"{"run":1}"#));
        assert_eq!(s.header("location"), Some("/payments/1"));
    }
    assert_eq!(sent.iter().filter(|s| !s.replayed()).count(), 1);
}

fn chunked_route(chunks: Vec<Bytes>, runs: &Arc<AtomicUsize>) -> Router {
    let runs = Arc::clone(runs);
    Router::new().route(
        "/export",
        post(move || {
            runs.fetch_add(1, Ordering::SeqCst);
            let stream = futures::stream::iter(chunks.clone().into_iter().map(Ok::<_, Infallible>));
            async move { Response::new(Body::from_stream(stream)) }
        }),
    )
}

#[tokio::test]
async fn a_streamed_body_within_the_cap_is_replayed_byte_identical() {
    let count = runs();
    let service = IdempotencyService::in_memory();
    let chunks: Vec<Bytes> = (0..5)
        .map(|i| Bytes::from(format!("chunk-{i}:{}\n", "z".repeat(i * 10))))
        .collect();
    let whole: Vec<u8> = chunks.iter().flat_map(|c| c.to_vec()).collect();
    let app = chunked_route(chunks, &count).route_layer(IdempotencyLayer::new(service.clone()));

    let first = send(&app, post_json("/export", "k", "{}")).await;
    let replay = send(&app, post_json("/export", "k", "{}")).await;

    assert_eq!(first.body, whole);
    assert_eq!(replay.body, whole);
    assert!(replay.replayed());
    assert_eq!(count.load(Ordering::SeqCst), 1);
    let record = service
        .get(&record_key(None, &Method::POST, "/export", "k"))
        .await
        .unwrap()
        .unwrap();
    let RecordState::Completed { response, .. } = record.state else {
        panic!("not completed: {:?}", record.state)
    };
    assert_eq!(response.status, 200);
    assert_eq!(response.body.as_bytes(), &whole[..]);
}

#[tokio::test]
async fn a_streamed_body_over_the_cap_reaches_the_client_whole_and_releases_the_key() {
    let count = runs();
    let service = IdempotencyService::in_memory();
    let chunks: Vec<Bytes> = (b'a'..=b'd').map(|c| Bytes::from(vec![c; 1024])).collect();
    let whole: Vec<u8> = chunks.iter().flat_map(|c| c.to_vec()).collect();
    let layer = IdempotencyLayer::builder(service.clone())
        .max_response_bytes(1024)
        .build()
        .unwrap();
    let app = chunked_route(chunks, &count).route_layer(layer);

    let first = send(&app, post_json("/export", "k", "{}")).await;
    assert_eq!(first.status, StatusCode::OK);
    assert_eq!(first.body, whole);
    let key = record_key(None, &Method::POST, "/export", "k");
    assert_eq!(service.get(&key).await.unwrap(), None);

    let second = send(&app, post_json("/export", "k", "{}")).await;
    assert_eq!(second.body, whole);
    assert!(!second.replayed());
    assert_eq!(count.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn get_requests_pass_through_untouched() {
    let count = runs();
    let service = IdempotencyService::in_memory();
    let app = {
        let count = Arc::clone(&count);
        Router::new()
            .route(
                "/items",
                get(move || {
                    let n = count.fetch_add(1, Ordering::SeqCst);
                    async move { format!("items {n}") }
                }),
            )
            .route_layer(
                IdempotencyLayer::builder(service.clone())
                    .required(true)
                    .build()
                    .unwrap(),
            )
    };

    let first = send(&app, request(Method::GET, "/items", Some("k"), "")).await;
    let second = send(&app, request(Method::GET, "/items", Some("k"), "")).await;
    let without_key = send(&app, request(Method::GET, "/items", None, "")).await;

    assert_eq!(first.body, "items 0");
    assert_eq!(second.body, "items 1");
    assert_eq!(without_key.body, "items 2");
    assert!(!second.replayed());
    let key = record_key(None, &Method::GET, "/items", "k");
    assert_eq!(service.get(&key).await.unwrap(), None);
}

#[tokio::test]
async fn without_required_mode_a_request_without_a_key_runs_unprotected() {
    let count = runs();
    let app = counting_route("/pay", &count)
        .route_layer(IdempotencyLayer::new(IdempotencyService::in_memory()));

    send(&app, request(Method::POST, "/pay", None, "{}")).await;
    let second = send(&app, request(Method::POST, "/pay", None, "{}")).await;

    assert_eq!(second.status, StatusCode::CREATED);
    assert!(!second.replayed());
    assert_eq!(count.load(Ordering::SeqCst), 2);
}

/// A route answering each run with the next status of `statuses`.
fn status_route(
    statuses: Vec<StatusCode>,
    runs: &Arc<AtomicUsize>,
    layer: IdempotencyLayer,
) -> Router {
    let runs = Arc::clone(runs);
    Router::new()
        .route(
            "/op",
            post(move || {
                let run = runs.fetch_add(1, Ordering::SeqCst);
                let status = statuses[run.min(statuses.len() - 1)];
                async move { (status, format!("run {run}")) }
            }),
        )
        .route_layer(layer)
}

async fn twice(app: &Router) -> (Sent, Sent) {
    let first = send(app, post_json("/op", "k", "{}")).await;
    let second = send(app, post_json("/op", "k", "{}")).await;
    (first, second)
}

#[tokio::test]
async fn server_errors_release_the_key_and_client_errors_are_recorded() {
    let layer = || IdempotencyLayer::new(IdempotencyService::in_memory());
    let cases = [
        (StatusCode::INTERNAL_SERVER_ERROR, 2, false),
        (StatusCode::BAD_GATEWAY, 2, false),
        (StatusCode::UNPROCESSABLE_ENTITY, 1, true),
        (StatusCode::CONFLICT, 1, true),
        (StatusCode::TOO_MANY_REQUESTS, 2, false),
        (StatusCode::UNAUTHORIZED, 2, false),
        (StatusCode::SEE_OTHER, 1, true),
    ];
    for (status, expected_runs, replayed) in cases {
        let count = runs();
        let app = status_route(vec![status, StatusCode::OK], &count, layer());
        let (first, second) = twice(&app).await;
        assert_eq!(first.status, status);
        assert_eq!(count.load(Ordering::SeqCst), expected_runs, "{status}");
        assert_eq!(second.replayed(), replayed, "{status}");
        let expected_second = if replayed { status } else { StatusCode::OK };
        assert_eq!(second.status, expected_second, "{status}");
    }
}

#[tokio::test]
async fn status_policies_are_configurable_per_class_and_per_status() {
    let builder = || -> IdempotencyLayerBuilder {
        IdempotencyLayer::builder(IdempotencyService::in_memory())
            .on_class(StatusClass::ServerError, ResponsePolicy::Record)
            .on_class(StatusClass::ClientError, ResponsePolicy::Release)
            .on_status(StatusCode::CONFLICT, ResponsePolicy::Record)
    };
    let cases = [
        (StatusCode::INTERNAL_SERVER_ERROR, 1),
        (StatusCode::BAD_REQUEST, 2),
        (StatusCode::CONFLICT, 1),
    ];
    for (status, expected_runs) in cases {
        let count = runs();
        let app = status_route(
            vec![status, StatusCode::OK],
            &count,
            builder().build().unwrap(),
        );
        let (first, second) = twice(&app).await;
        assert_eq!(count.load(Ordering::SeqCst), expected_runs, "{status}");
        if expected_runs == 1 {
            assert_eq!(second.status, status);
            assert_eq!(second.body, first.body);
            assert!(second.replayed());
        }
    }
}

#[tokio::test]
async fn a_panicking_handler_answers_500_and_releases_the_key() {
    let count = runs();
    let app = {
        let count = Arc::clone(&count);
        Router::new()
            .route(
                "/op",
                post(move || {
                    let run = count.fetch_add(1, Ordering::SeqCst);
                    async move {
                        if run == 0 {
                            panic!("handler bug on the first run");
                        }
                        "done"
                    }
                }),
            )
            .route_layer(IdempotencyLayer::new(IdempotencyService::in_memory()))
    };

    let (first, second) = twice(&app).await;

    assert_problem(&first, 500, "internal");
    assert_eq!(second.status, StatusCode::OK);
    assert_eq!(second.body, "done");
    assert_eq!(count.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn the_handler_finishes_and_is_recorded_when_the_client_hangs_up() {
    let (started, proceed, count) = (Arc::new(Notify::new()), Arc::new(Notify::new()), runs());
    let app = gated_route(&started, &proceed, &count)
        .route_layer(IdempotencyLayer::new(IdempotencyService::in_memory()));

    let client = tokio::spawn({
        let app = app.clone();
        async move { send(&app, post_json("/slow", "k", "{}")).await }
    });
    started.notified().await;
    client.abort();
    assert!(client.await.unwrap_err().is_cancelled());
    proceed.notify_one();
    let retry = send(&app, post_json("/slow", "k", "{}")).await;

    assert_eq!(retry.status, StatusCode::CREATED);
    assert!(retry.replayed());
    assert_eq!(retry.json(), json!({ "run": 1 }));
    assert_eq!(count.load(Ordering::SeqCst), 1);
}

/// Collects the fields of every event, one map per event.
#[derive(Clone, Default)]
struct Events(Arc<Mutex<Vec<BTreeMap<String, String>>>>);

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Events {
    fn on_event(&self, event: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
        struct Fields<'a>(&'a mut BTreeMap<String, String>);
        impl tracing::field::Visit for Fields<'_> {
            fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
                self.0.insert(field.name().to_owned(), format!("{value:?}"));
            }
            fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
                self.0.insert(field.name().to_owned(), value.to_owned());
            }
        }
        let mut fields = BTreeMap::new();
        event.record(&mut Fields(&mut fields));
        self.0.lock().unwrap().push(fields);
    }
}

#[tokio::test]
async fn a_replay_emits_a_tracing_event_naming_the_key_and_scope() {
    use tracing_subscriber::layer::SubscriberExt;
    let events = Events::default();
    let _guard =
        tracing::subscriber::set_default(tracing_subscriber::registry().with(events.clone()));
    let app = counting_route("/pay", &runs())
        .route_layer(IdempotencyLayer::new(IdempotencyService::in_memory()));

    send(&app, post_json("/pay", "k-7", "{}")).await;
    let before = events.0.lock().unwrap().len();
    send(&app, post_json("/pay", "k-7", "{}")).await;

    let events = events.0.lock().unwrap();
    let replays: Vec<_> = events
        .iter()
        .filter(|e| e.get("message").map(String::as_str) == Some("replayed a stored response"))
        .collect();
    assert_eq!(replays.len(), 1);
    assert!(events[..before]
        .iter()
        .all(|e| !e.values().any(|v| v.contains("replayed"))));
    let replay = replays[0];
    assert_eq!(replay["key"], "http:-:POST:/pay/k-7");
    assert_eq!(replay["scope"], "http:-:POST:/pay");
    assert_eq!(replay["status"], "201");
}

#[tokio::test]
async fn a_service_that_panics_before_returning_its_future_releases_the_key() {
    use tower::Layer;
    let count = runs();
    let inner = tower::service_fn({
        let count = Arc::clone(&count);
        move |_request: Request<idem::http::RequestBody>| {
            if count.fetch_add(1, Ordering::SeqCst) == 0 {
                panic!("service bug before its future exists");
            }
            async { Ok::<_, Infallible>(Response::new(Body::from("done"))) }
        }
    });
    // Without the release, the second call would wait on the 30 s lease and give up.
    let idem = IdempotencyService::builder(MemoryStore::new())
        .wait_timeout(Duration::from_secs(1))
        .build()
        .unwrap();
    let service = IdempotencyLayer::new(idem).layer(inner);
    let call = |service: &_| {
        let service: &idem::http::IdempotencyMiddleware<_> = service;
        service.clone().oneshot(post_json("/op", "k", "{}"))
    };

    let first = call(&service).await.unwrap();
    let second = call(&service).await.unwrap();

    assert_eq!(first.status(), StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(second.status(), StatusCode::OK);
    assert_eq!(count.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn a_long_principal_fits_a_service_with_short_keys() {
    let service = IdempotencyService::builder(MemoryStore::new())
        .max_key_len(40)
        .build()
        .unwrap();
    let layer = IdempotencyLayer::builder(service)
        .principal(|_: &axum::http::request::Parts| Some("user_0123456789abcdef0123".to_owned()))
        .build()
        .unwrap();
    let count = runs();
    let app = Router::new()
        .route(
            "/op",
            post({
                let count = Arc::clone(&count);
                move || {
                    count.fetch_add(1, Ordering::SeqCst);
                    async { "done" }
                }
            }),
        )
        .route_layer(layer);

    let (first, second) = twice(&app).await;

    assert_eq!(first.status, StatusCode::OK);
    assert!(second.replayed());
    assert_eq!(count.load(Ordering::SeqCst), 1);
}
