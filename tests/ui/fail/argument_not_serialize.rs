use idem::idempotent;

struct Connection;

#[idempotent(key = id)]
async fn charge(id: String, connection: &Connection) -> Result<u64, idem::Error> {
    let _ = connection;
    Ok(id.len() as u64)
}

fn main() {}
