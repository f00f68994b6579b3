use idem::idempotent;

#[idempotent(key = id, ttl = 0)]
async fn zero(id: String) -> Result<u32, idem::Error> {
    Ok(id.len() as u32)
}

#[idempotent(key = id, ttl = -1)]
async fn negative(id: String) -> Result<u32, idem::Error> {
    Ok(id.len() as u32)
}

#[idempotent(key = id, ttl = "1d")]
async fn text(id: String) -> Result<u32, idem::Error> {
    Ok(id.len() as u32)
}

#[idempotent(key = id, lock_timeout = 1.5)]
async fn fraction(id: String) -> Result<u32, idem::Error> {
    Ok(id.len() as u32)
}

#[idempotent(key = id, wait_timeout = 3153600001)]
async fn too_long(id: String) -> Result<u32, idem::Error> {
    Ok(id.len() as u32)
}

fn main() {}
