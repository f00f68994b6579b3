use idem::idempotent;

#[idempotent(key = id, on_error = "recrod")]
async fn charge(id: String) -> Result<u64, idem::Error> {
    Ok(id.len() as u64)
}

fn main() {}
