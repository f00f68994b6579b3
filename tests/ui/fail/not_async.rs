use idem::idempotent;

#[idempotent(key = id)]
fn charge(id: String) -> Result<u32, idem::Error> {
    Ok(id.len() as u32)
}

fn main() {
    // The fn is still emitted, so this call compiles and adds no follow-on error.
    let _ = charge(String::new());
}
