use idem::idempotent;

#[idempotent(key = id)]
async fn count(id: String) -> u32 {
    id.len() as u32
}

fn main() {}
