use idem::idempotent;

trait Payments {
    #[idempotent(key = id)]
    async fn charge(&self, id: String) -> Result<u64, idem::Error>;
}

fn main() {}
