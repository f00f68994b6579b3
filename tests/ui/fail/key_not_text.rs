use idem::idempotent;

#[derive(serde::Serialize)]
pub struct OrderId(u64);

#[idempotent(key = order)]
async fn charge(order: OrderId) -> Result<u64, idem::Error> {
    Ok(order.0)
}

fn main() {}
