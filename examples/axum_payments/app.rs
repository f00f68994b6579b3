//! The payments API of the `axum_payments` example, shared with its end-to-end test.
//!
//! Accounts authenticate with `Authorization: Bearer <account>`: a demo stand-in for real
//! token verification, where the token is the account id. Charges and refunds are kept in
//! memory; the idempotency records live wherever the given service keeps them.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use idem::http::IdempotencyLayer;
use idem::{CallOptions, Idempotency};
use serde::{Deserialize, Serialize};

/// How the example behaves.
#[derive(Debug, Clone)]
pub struct Options {
    /// How long the simulated card gateway takes to capture a payment.
    pub gateway_delay: Duration,
    /// How long a duplicate waits for the first request before it gets 409.
    pub wait_timeout: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            gateway_delay: Duration::from_millis(100),
            wait_timeout: Duration::from_secs(10),
        }
    }
}

/// A payment request.
#[derive(Debug, Deserialize)]
pub struct NewPayment {
    /// In the currency's minor unit (cents).
    pub amount: u64,
    /// ISO 4217 code.
    pub currency: String,
}

/// A captured payment.
#[derive(Debug, Clone, Serialize)]
pub struct Payment {
    id: String,
    account: String,
    amount: u64,
    currency: String,
    status: &'static str,
}

/// A refund request.
#[derive(Debug, Deserialize)]
pub struct NewRefund {
    /// In the payment's minor unit.
    pub amount: u64,
}

#[derive(Debug, Serialize)]
struct Refund {
    id: String,
    payment: String,
    amount: u64,
    status: &'static str,
}

struct Ledger {
    options: Options,
    payments: Mutex<Vec<Payment>>,
    next_id: AtomicU64,
}

/// The account a request authenticates as.
pub fn account(headers: &HeaderMap) -> Option<String> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let token = value.strip_prefix("Bearer ")?.trim();
    (!token.is_empty()).then(|| token.to_owned())
}

/// The API, with POST and PATCH requests behind the idempotency layer (key required).
pub fn router(service: impl Idempotency + 'static, options: Options) -> Router {
    let layer = IdempotencyLayer::builder(service)
        .required(true)
        .principal(|parts: &axum::http::request::Parts| account(&parts.headers))
        .call_options(CallOptions::new().wait_timeout(options.wait_timeout))
        .build()
        .expect("the example's settings are valid");
    let ledger = Arc::new(Ledger {
        options,
        payments: Mutex::new(Vec::new()),
        next_id: AtomicU64::new(1),
    });
    Router::new()
        .route("/payments", post(create_payment).get(list_payments))
        .route("/payments/{id}", get(show_payment))
        .route("/payments/{id}/refunds", post(create_refund))
        .route_layer(layer)
        .with_state(ledger)
}

fn problem(status: StatusCode, title: &str, detail: &str) -> Response {
    let body = serde_json::json!({
        "type": "about:blank", "title": title, "status": status.as_u16(), "detail": detail,
    });
    let mut response = (status, body.to_string()).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/problem+json"),
    );
    response
}

fn unauthorized() -> Response {
    let mut response = problem(
        StatusCode::UNAUTHORIZED,
        "Unauthorized",
        "send Authorization: Bearer <account>",
    );
    response
        .headers_mut()
        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    response
}

async fn create_payment(
    State(ledger): State<Arc<Ledger>>,
    headers: HeaderMap,
    Json(new): Json<NewPayment>,
) -> Response {
    let Some(account) = account(&headers) else {
        return unauthorized();
    };
    if new.amount == 0 || new.currency.len() != 3 {
        let detail = "amount must be positive and currency a 3-letter code";
        return problem(StatusCode::BAD_REQUEST, "Invalid payment", detail);
    }
    // The card gateway: the side effect that must happen once per key.
    tokio::time::sleep(ledger.options.gateway_delay).await;
    let number = ledger.next_id.fetch_add(1, Ordering::Relaxed);
    let payment = Payment {
        id: format!("pay_{number}"),
        account,
        amount: new.amount,
        currency: new.currency.to_ascii_uppercase(),
        status: "captured",
    };
    ledger.payments.lock().unwrap().push(payment.clone());

    let location = format!("/payments/{}", payment.id);
    let mut response = (StatusCode::CREATED, Json(payment)).into_response();
    let headers = response.headers_mut();
    headers.insert(header::LOCATION, HeaderValue::try_from(location).unwrap());
    headers.insert("x-request-id", HeaderValue::from(number));
    response
}

async fn list_payments(State(ledger): State<Arc<Ledger>>, headers: HeaderMap) -> Response {
    let Some(account) = account(&headers) else {
        return unauthorized();
    };
    let payments: Vec<Payment> = ledger
        .payments
        .lock()
        .unwrap()
        .iter()
        .filter(|p| p.account == account)
        .cloned()
        .collect();
    Json(serde_json::json!({ "count": payments.len(), "payments": payments })).into_response()
}

async fn show_payment(
    State(ledger): State<Arc<Ledger>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    let Some(account) = account(&headers) else {
        return unauthorized();
    };
    let payments = ledger.payments.lock().unwrap();
    match payments.iter().find(|p| p.id == id && p.account == account) {
        Some(payment) => Json(payment.clone()).into_response(),
        None => problem(StatusCode::NOT_FOUND, "No such payment", &id),
    }
}

async fn create_refund(
    State(ledger): State<Arc<Ledger>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Json(new): Json<NewRefund>,
) -> Response {
    let Some(account) = account(&headers) else {
        return unauthorized();
    };
    let amount = {
        let payments = ledger.payments.lock().unwrap();
        match payments.iter().find(|p| p.id == id && p.account == account) {
            Some(payment) => payment.amount,
            None => return problem(StatusCode::NOT_FOUND, "No such payment", &id),
        }
    };
    if new.amount == 0 || new.amount > amount {
        let detail = "refund amount must be positive and at most the payment's";
        return problem(StatusCode::BAD_REQUEST, "Invalid refund", detail);
    }
    let number = ledger.next_id.fetch_add(1, Ordering::Relaxed);
    let refund = Refund {
        id: format!("re_{number}"),
        payment: id.clone(),
        amount: new.amount,
        status: "pending",
    };
    let location = format!("/payments/{id}/refunds/{}", refund.id);
    let mut response = (StatusCode::ACCEPTED, Json(refund)).into_response();
    response
        .headers_mut()
        .insert(header::LOCATION, HeaderValue::try_from(location).unwrap());
    response
}
