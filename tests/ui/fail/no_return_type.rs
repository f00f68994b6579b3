use idem::idempotent;

#[idempotent(key = id)]
async fn notify(id: String) {
    let _ = id;
}

fn main() {}
