//! A store that delegates to a [`MemoryStore`] and fails, delays or loses the replies of
//! chosen calls.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use idem::store::{Claim, ClaimReply, Finish, LeaseReply, Owner};
use idem::{DeleteReply, MemoryStore, Record, Store, StoreError, Token};

/// A call of the [`Store`] trait.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Op {
    Claim,
    Complete,
    Renew,
    Release,
    Get,
    Delete,
    WaitForChange,
}

const ALL_OPS: [Op; 7] = [
    Op::Claim,
    Op::Complete,
    Op::Renew,
    Op::Release,
    Op::Get,
    Op::Delete,
    Op::WaitForChange,
];

/// What goes wrong with a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The call never reaches the store: a connection error, nothing applied.
    Refuse,
    /// The store applies the call, then the connection breaks before the reply arrives.
    LoseReply,
    /// The call reaches the store this late, then applies normally.
    Delay(Duration),
}

#[derive(Default)]
struct Plan {
    /// Faults for the next calls of an op, one each, in order.
    next: HashMap<Op, VecDeque<Fault>>,
    /// A fault for every call of an op once `next` is used up.
    always: HashMap<Op, Fault>,
    calls: HashMap<Op, usize>,
}

/// A [`MemoryStore`] with faults planned per call. Clones share the store and the plan, so
/// a test keeps one clone to steer the one it gave the service.
#[derive(Clone, Default)]
pub struct FaultyStore {
    memory: MemoryStore,
    plan: Arc<Mutex<Plan>>,
}

impl FaultyStore {
    pub fn new() -> Self {
        FaultyStore::default()
    }

    /// The store underneath, to read records without faults.
    pub fn memory(&self) -> &MemoryStore {
        &self.memory
    }

    /// The next `times` calls of `op` suffer `fault`.
    pub fn inject(&self, op: Op, fault: Fault, times: usize) {
        let mut plan = self.plan();
        plan.next
            .entry(op)
            .or_default()
            .extend((0..times).map(|_| fault));
    }

    /// Every later call of `op` suffers `fault`.
    pub fn always(&self, op: Op, fault: Fault) {
        self.plan().always.insert(op, fault);
    }

    /// Every call of every op is refused, as if the server were down.
    pub fn down(&self) {
        for op in ALL_OPS {
            self.always(op, Fault::Refuse);
        }
    }

    /// How many calls of `op` were made, faulty or not.
    pub fn calls(&self, op: Op) -> usize {
        self.plan().calls.get(&op).copied().unwrap_or(0)
    }

    /// How many calls were made in all.
    pub fn all_calls(&self) -> usize {
        self.plan().calls.values().sum()
    }

    fn plan(&self) -> std::sync::MutexGuard<'_, Plan> {
        self.plan.lock().expect("plan lock")
    }

    fn fault_for(&self, op: Op) -> Option<Fault> {
        let mut plan = self.plan();
        *plan.calls.entry(op).or_default() += 1;
        let next = plan.next.get_mut(&op).and_then(VecDeque::pop_front);
        next.or_else(|| plan.always.get(&op).copied())
    }

    async fn run<T, F>(&self, op: Op, call: F) -> Result<T, StoreError>
    where
        F: Future<Output = Result<T, StoreError>> + Send,
    {
        match self.fault_for(op) {
            None => call.await,
            Some(Fault::Refuse) => Err(connection_error("connection refused")),
            Some(Fault::LoseReply) => {
                call.await?;
                Err(connection_error("connection reset before the reply"))
            }
            Some(Fault::Delay(delay)) => {
                tokio::time::sleep(delay).await;
                call.await
            }
        }
    }
}

fn connection_error(what: &str) -> StoreError {
    let error = std::io::Error::new(
        std::io::ErrorKind::ConnectionReset,
        format!("injected: {what}"),
    );
    StoreError::Connection(Box::new(error))
}

#[async_trait]
impl Store for FaultyStore {
    async fn claim(&self, claim: Claim<'_>) -> Result<ClaimReply, StoreError> {
        self.run(Op::Claim, self.memory.claim(claim)).await
    }

    async fn complete(
        &self,
        owner: &Owner<'_>,
        finish: &Finish,
        ttl: Duration,
    ) -> Result<LeaseReply, StoreError> {
        let call = self.memory.complete(owner, finish, ttl);
        self.run(Op::Complete, call).await
    }

    async fn renew(
        &self,
        key: &str,
        token: &Token,
        lease: Duration,
    ) -> Result<LeaseReply, StoreError> {
        self.run(Op::Renew, self.memory.renew(key, token, lease))
            .await
    }

    async fn release(&self, key: &str, token: &Token) -> Result<LeaseReply, StoreError> {
        self.run(Op::Release, self.memory.release(key, token)).await
    }

    async fn get(&self, key: &str) -> Result<Option<Record>, StoreError> {
        self.run(Op::Get, self.memory.get(key)).await
    }

    async fn delete(&self, key: &str, force: bool) -> Result<DeleteReply, StoreError> {
        self.run(Op::Delete, self.memory.delete(key, force)).await
    }

    async fn wait_for_change(&self, key: &str, timeout: Duration) -> Result<(), StoreError> {
        let call = self.memory.wait_for_change(key, timeout);
        self.run(Op::WaitForChange, call).await
    }
}
