use idem::idempotent;

struct NotAService;

#[idempotent(key = id, service = NotAService)]
async fn charge(id: String) -> Result<u64, idem::Error> {
    Ok(id.len() as u64)
}

fn main() {}
