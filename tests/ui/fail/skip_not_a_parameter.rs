use idem::idempotent;

#[idempotent(key = id, skip(amont))]
async fn charge(id: String, amount: u64) -> Result<u64, idem::Error> {
    Ok(amount + id.len() as u64)
}

fn main() {}
