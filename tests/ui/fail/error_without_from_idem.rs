use idem::idempotent;

#[derive(Debug)]
pub struct ChargeError;

#[idempotent(key = id)]
async fn charge(id: String) -> Result<u64, ChargeError> {
    Ok(id.len() as u64)
}

fn main() {}
