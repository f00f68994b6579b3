use idem::idempotent;

#[idempotent(key = id)]
async fn charge(id: String) -> Result<u64, idem::Error> {
    let amount: u64 = "twelve";
    Ok(amount + id.len() as u64)
}

fn main() {}
