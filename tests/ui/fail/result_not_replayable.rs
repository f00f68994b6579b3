use idem::idempotent;

pub struct Receipt {
    pub amount: u64,
}

#[idempotent(key = id)]
async fn charge(id: String) -> Result<Receipt, idem::Error> {
    Ok(Receipt {
        amount: id.len() as u64,
    })
}

fn main() {}
