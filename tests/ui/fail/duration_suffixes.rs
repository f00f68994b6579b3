use idem::idempotent;

#[idempotent(key = id, ttl = 24h)]
async fn hours(id: String) -> Result<u32, idem::Error> {
    Ok(id.len() as u32)
}

#[idempotent(key = id, lock_timeout = 500ms)]
async fn millis(id: String) -> Result<u32, idem::Error> {
    Ok(id.len() as u32)
}

#[idempotent(key = id, wait_timeout = 2min)]
async fn minutes(id: String) -> Result<u32, idem::Error> {
    Ok(id.len() as u32)
}

#[idempotent(key = id, ttl = 30s)]
async fn seconds(id: String) -> Result<u32, idem::Error> {
    Ok(id.len() as u32)
}

#[idempotent(key = id, ttl = 7days)]
async fn days(id: String) -> Result<u32, idem::Error> {
    Ok(id.len() as u32)
}

#[idempotent(key = id, ttl = 10xyz)]
async fn unknown_unit(id: String) -> Result<u32, idem::Error> {
    Ok(id.len() as u32)
}

fn main() {}
