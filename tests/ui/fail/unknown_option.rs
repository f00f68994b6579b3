use idem::idempotent;

#[idempotent(kee = id)]
async fn charge(id: String) -> Result<u32, idem::Error> {
    Ok(id.len() as u32)
}

#[idempotent(key = id, frobnicate = true)]
async fn refund(id: String) -> Result<u32, idem::Error> {
    Ok(id.len() as u32)
}

fn main() {}
