use idem::idempotent;

type Answer = Option<u32>;

#[idempotent(key = id)]
async fn count(id: String) -> Answer {
    Some(id.len() as u32)
}

fn main() {}
