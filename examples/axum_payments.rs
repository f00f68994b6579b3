//! A small payments API behind the idempotency layer.
//!
//! ```text
//! cargo run --example axum_payments --features axum,redis
//! ```
//!
//! It listens on `127.0.0.1:3000` (set `ADDR` to change it) and keeps its idempotency
//! records in memory, or in Redis when `REDIS_URL` is set
//! (`REDIS_URL=redis://127.0.0.1:<port>`). `RUST_LOG=idem_runtime=debug` shows every
//! claim, replay and release.

#[path = "axum_payments/app.rs"]
mod app;

use idem::store::redis::RedisStore;
use idem::IdempotencyService;
use tracing_subscriber::EnvFilter;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::from_default_env())
        .init();

    let service = match std::env::var("REDIS_URL") {
        Ok(url) => {
            let store = RedisStore::connect(&url).await?;
            IdempotencyService::builder(store).build()?
        }
        Err(_) => IdempotencyService::in_memory(),
    };
    let addr = std::env::var("ADDR").unwrap_or_else(|_| "127.0.0.1:3000".to_owned());
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    println!("payments API on http://{}", listener.local_addr()?);
    axum::serve(listener, app::router(service, app::Options::default())).await?;
    Ok(())
}
