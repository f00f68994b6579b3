//! Every receiver form compiles, and receivers are never fingerprinted (`Payments` is not
//! `Serialize`).
use std::sync::Arc;

use idem::{idempotent, IdempotencyService};

pub struct Payments {
    service: IdempotencyService,
    charged: u64,
}

impl Payments {
    #[idempotent(key = id, service = self.service)]
    pub async fn by_ref(&self, id: String) -> Result<u64, idem::Error> {
        Ok(self.charged + id.len() as u64)
    }

    #[idempotent(key = id, service = self.service)]
    pub async fn by_mut(&mut self, id: String) -> Result<u64, idem::Error> {
        self.charged += 1;
        Ok(self.charged + id.len() as u64)
    }

    #[idempotent(key = id, service = self.service)]
    pub async fn typed_ref(self: &Self, id: String) -> Result<u64, idem::Error> {
        Ok(self.charged + id.len() as u64)
    }

    #[idempotent(key = id, service = self.service)]
    pub async fn arc(self: Arc<Self>, id: String) -> Result<u64, idem::Error> {
        Ok(self.charged + id.len() as u64)
    }

    #[idempotent(key = id, service = self.service)]
    pub async fn by_value(self, id: String) -> Result<u64, idem::Error> {
        Ok(self.charged + id.len() as u64)
    }

    #[idempotent(key = id, service = self.service)]
    pub async fn self_in_a_nested_macro(&self, id: String) -> Result<u64, idem::Error> {
        macro_rules! charged {
            ($this:ident) => {
                $this.charged
            };
        }
        Ok(charged!(self) + id.len() as u64)
    }
}

fn main() {}
