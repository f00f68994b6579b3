use idem::idempotent;

#[idempotent(key = id, scope = " payments", crate = "not a path", validate_fingerprint = 1)]
async fn charge(id: String) -> Result<u64, idem::Error> {
    Ok(id.len() as u64)
}

#[idempotent(key = id, skip(id), fingerprint = id.len())]
async fn refund(id: String) -> Result<u64, idem::Error> {
    Ok(id.len() as u64)
}

fn main() {}
