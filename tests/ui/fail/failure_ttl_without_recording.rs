use idem::idempotent;

#[idempotent(key = id, failure_ttl = 600)]
async fn released(id: String) -> Result<u32, idem::Error> {
    Ok(id.len() as u32)
}

#[idempotent(key = id, on_error = "release", failure_ttl = std::time::Duration::from_secs(60))]
async fn released_explicitly(id: String) -> Result<u32, idem::Error> {
    Ok(id.len() as u32)
}

#[idempotent(key = id, on_error = "record", failure_ttl = 0)]
async fn zero(id: String) -> Result<u32, idem::Error> {
    Ok(id.len() as u32)
}

fn main() {}
