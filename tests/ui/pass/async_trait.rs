//! With `#[async_trait]`: the attribute on the impl (or trait), `#[idempotent]` on the
//! method. The future stays `Send`, as `#[async_trait]` requires.
use std::sync::Arc;

use async_trait::async_trait;
use idem::{idempotent, IdempotencyService};

#[async_trait]
pub trait Payments {
    async fn charge(&self, id: String, amount: u64) -> Result<u64, idem::Error>;
    async fn refund(self: Arc<Self>, id: String) -> Result<(), idem::Error>;

    #[idempotent(key = id)]
    async fn provided(&self, id: String) -> Result<u64, idem::Error> {
        Ok(id.len() as u64)
    }
}

pub struct Gateway {
    service: IdempotencyService,
}

#[async_trait]
impl Payments for Gateway {
    #[idempotent(key = format!("charge:{id}"), service = self.service, ttl = 86400)]
    async fn charge(&self, id: String, amount: u64) -> Result<u64, idem::Error> {
        Ok(amount + id.len() as u64)
    }

    #[idempotent(key = id, service = self.service)]
    async fn refund(self: Arc<Self>, id: String) -> Result<(), idem::Error> {
        let _ = (&self.service, id);
        Ok(())
    }
}

fn main() {
    fn is_send<T: Send>(_: T) {}
    let gateway = Gateway {
        service: IdempotencyService::in_memory(),
    };
    is_send(gateway.charge(String::new(), 1));
    let _: Box<dyn Payments + Send + Sync> = Box::new(gateway);
}
