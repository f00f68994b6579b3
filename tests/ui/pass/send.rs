//! The future is `Send` when the body's is, and may be spawned.
use idem::idempotent;

#[idempotent(key = id)]
pub async fn charge(id: String) -> Result<u64, idem::Error> {
    tokio::task::yield_now().await;
    Ok(id.len() as u64)
}

fn main() {
    fn is_send<T: Send + 'static>(_: T) {}
    is_send(charge(String::new()));
}
