//! End to end: the `axum_payments` example's router served on a loopback port, its records
//! in a Redis server the test starts, driven over TCP by a real HTTP client (reqwest).

#[path = "../examples/axum_payments/app.rs"]
mod app;
#[path = "support/redis_harness.rs"]
mod redis_harness;

use std::time::Duration;

use bytes::Bytes;
use idem::store::redis::RedisStore;
use idem::IdempotencyService;
use redis_harness::RedisServer;
use reqwest::header::HeaderMap;
use reqwest::StatusCode;
use serde_json::{json, Value};

/// The example serving on a loopback port, with its Redis server.
struct Running {
    base: String,
    client: reqwest::Client,
    server: tokio::task::JoinHandle<()>,
    _redis: RedisServer,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.server.abort();
    }
}

/// What the client received.
#[derive(Debug)]
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
        self.header("idempotent-replayed") == Some("true")
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap()
    }
}

async fn start(options: app::Options) -> Running {
    let redis = RedisServer::start();
    let store = RedisStore::connect(&redis.url()).await.unwrap();
    let service = IdempotencyService::builder(store).build().unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let router = app::router(service, options);
    let server = tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    let client = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    Running {
        base,
        client,
        server,
        _redis: redis,
    }
}

impl Running {
    fn post(
        &self,
        path: &str,
        account: &str,
        key: Option<&str>,
        body: &Value,
    ) -> reqwest::RequestBuilder {
        let mut request = self
            .client
            .post(format!("{}{path}", self.base))
            .bearer_auth(account)
            .header("content-type", "application/json")
            .body(body.to_string());
        if let Some(key) = key {
            request = request.header("idempotency-key", key);
        }
        request
    }

    async fn send(&self, request: reqwest::RequestBuilder) -> Sent {
        let response = request.send().await.unwrap();
        Sent {
            status: response.status(),
            headers: response.headers().clone(),
            body: response.bytes().await.unwrap(),
        }
    }

    async fn payment_count(&self, account: &str) -> u64 {
        let request = self
            .client
            .get(format!("{}/payments", self.base))
            .bearer_auth(account);
        self.send(request).await.json()["count"].as_u64().unwrap()
    }
}

fn charge(amount: u64) -> Value {
    json!({ "amount": amount, "currency": "eur" })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_replay_the_first_payment_with_the_replayed_header() {
    let api = start(app::Options::default()).await;

    let first = api
        .send(api.post("/payments", "alice", Some("\"k-1\""), &charge(1250)))
        .await;
    let mut retries = Vec::new();
    for _ in 0..3 {
        let retry = api.post("/payments", "alice", Some("k-1"), &charge(1250));
        retries.push(api.send(retry).await);
    }
    let bob = api
        .send(api.post("/payments", "bob", Some("k-1"), &charge(1250)))
        .await;

    assert_eq!(first.status, StatusCode::CREATED);
    assert!(!first.replayed());
    assert_eq!(first.header("location"), Some("/payments/pay_1"));
    assert_eq!(first.json()["id"], "pay_1");
    assert_eq!(first.header("x-request-id"), Some("1"));
    for retry in &retries {
        assert_eq!(retry.status, StatusCode::CREATED);
        assert!(retry.replayed());
        assert_eq!(retry.body, first.body);
        assert_eq!(retry.header("location"), Some("/payments/pay_1"));
        assert_eq!(retry.header("content-type"), Some("application/json"));
        assert_eq!(retry.header("x-request-id"), None);
    }
    assert_eq!(bob.status, StatusCode::CREATED);
    assert!(!bob.replayed());
    assert_eq!(bob.json()["id"], "pay_2");
    assert_eq!(api.payment_count("alice").await, 1);
    assert_eq!(api.payment_count("bob").await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_duplicates_capture_one_payment() {
    let api = start(app::Options::default()).await;

    let duplicates = (0..10).map(|_| {
        let request = api.post("/payments", "alice", Some("dup-1"), &charge(900));
        api.send(request)
    });
    let sent = futures::future::join_all(duplicates).await;

    for s in &sent {
        assert_eq!(s.status, StatusCode::CREATED);
        assert_eq!(s.body, sent[0].body);
        assert_eq!(s.header("location"), Some("/payments/pay_1"));
    }
    assert_eq!(sent.iter().filter(|s| !s.replayed()).count(), 1);
    assert_eq!(api.payment_count("alice").await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_times_out_retries_and_gets_the_one_payment() {
    let options = app::Options {
        gateway_delay: Duration::from_millis(400),
        ..app::Options::default()
    };
    let api = start(options).await;

    let impatient = api
        .post("/payments", "alice", Some("slow-1"), &charge(700))
        .timeout(Duration::from_millis(100))
        .send()
        .await;
    assert!(impatient.unwrap_err().is_timeout());

    // Retry with the same key until the service answers with something other than 409.
    let mut answer = None;
    for _ in 0..20 {
        let retry = api
            .send(api.post("/payments", "alice", Some("slow-1"), &charge(700)))
            .await;
        if retry.status != StatusCode::CONFLICT {
            answer = Some(retry);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let answer = answer.expect("an answer within 20 retries");

    assert_eq!(answer.status, StatusCode::CREATED);
    assert!(answer.replayed());
    assert_eq!(answer.json()["id"], "pay_1");
    assert_eq!(api.payment_count("alice").await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn misuse_of_keys_is_refused_with_problem_details() {
    let api = start(app::Options::default()).await;
    api.send(api.post("/payments", "alice", Some("k-1"), &charge(1250)))
        .await;

    let mismatch = api
        .send(api.post("/payments", "alice", Some("k-1"), &charge(9999)))
        .await;
    let missing = api
        .send(api.post("/payments", "alice", None, &charge(1250)))
        .await;
    let malformed = api
        .send(api.post("/payments", "alice", Some("\"open"), &charge(1250)))
        .await;

    for (sent, status, name) in [
        (&mismatch, 422, "fingerprint-mismatch"),
        (&missing, 400, "missing-key"),
        (&malformed, 400, "malformed-key"),
    ] {
        assert_eq!(sent.status.as_u16(), status, "{name}");
        assert_eq!(
            sent.header("content-type"),
            Some("application/problem+json")
        );
        assert_eq!(sent.json()["type"], format!("urn:idem:problem:{name}"));
        assert_eq!(sent.json()["status"], status);
    }
    assert_eq!(api.payment_count("alice").await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refunds_replay_their_202_and_validation_errors_stay_recorded() {
    let api = start(app::Options::default()).await;
    api.send(api.post("/payments", "alice", Some("p"), &charge(1000)))
        .await;

    let refund = |key: &'static str, amount: u64| {
        api.post(
            "/payments/pay_1/refunds",
            "alice",
            Some(key),
            &json!({ "amount": amount }),
        )
    };
    let accepted = api.send(refund("r-1", 400)).await;
    let accepted_again = api.send(refund("r-1", 400)).await;
    let too_much = api.send(refund("r-2", 5000)).await;
    let too_much_again = api.send(refund("r-2", 5000)).await;

    assert_eq!(accepted.status, StatusCode::ACCEPTED);
    assert_eq!(
        accepted.header("location"),
        Some("/payments/pay_1/refunds/re_2")
    );
    assert_eq!(accepted_again.status, StatusCode::ACCEPTED);
    assert_eq!(accepted_again.body, accepted.body);
    assert!(accepted_again.replayed());
    assert_eq!(too_much.status, StatusCode::BAD_REQUEST);
    assert_eq!(too_much_again.status, StatusCode::BAD_REQUEST);
    assert_eq!(too_much_again.body, too_much.body);
    assert!(too_much_again.replayed());
}
