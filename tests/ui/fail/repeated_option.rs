use idem::idempotent;

#[idempotent(key = id, ttl = 60, ttl = 3600)]
async fn charge(id: String) -> Result<u32, idem::Error> {
    Ok(id.len() as u32)
}

fn main() {}
