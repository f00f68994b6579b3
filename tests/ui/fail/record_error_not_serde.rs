use idem::idempotent;

#[derive(Debug)]
pub enum ChargeError {
    Idem(idem::Error),
    Declined,
}

impl From<idem::Error> for ChargeError {
    fn from(error: idem::Error) -> Self {
        ChargeError::Idem(error)
    }
}

#[idempotent(key = id, on_error = "record")]
async fn charge(id: String) -> Result<u64, ChargeError> {
    if id.is_empty() {
        return Err(ChargeError::Declined);
    }
    Ok(id.len() as u64)
}

fn main() {}
