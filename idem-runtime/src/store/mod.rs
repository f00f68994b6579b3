//! Stores: where records live, and the atomic transitions the service drives.
//!
//! Every method of [`Store`] is one atomic step on the store, decided by the store's own
//! clock. The service never reads a record and then writes it in a second step, so no
//! decision is taken on a stale read. The transitions:
//!
//! | call | from | to |
//! |---|---|---|
//! | [`claim`](Store::claim) | absent, or processing with a lapsed lease | processing (new token) |
//! | [`complete`](Store::complete) | processing with the caller's token | completed, failed or not replayable |
//! | [`renew`](Store::renew) | processing with the caller's token and a live lease | the same, lease extended |
//! | [`release`](Store::release) | processing with the caller's token | absent |
//! | [`delete`](Store::delete) | any (processing only when forced) | absent |
//!
//! Every write sets the record's expiry in the same step: a processing record expires one
//! lease after its lease ends (kept that long so a takeover can see whose claim it
//! replaces), a finished record expires its TTL after it finished.

use std::time::Duration;

use async_trait::async_trait;

use crate::error::StoreError;
use crate::fingerprint::Fingerprint;
use crate::record::{Millis, Record, Response, Token};

mod memory;
#[cfg(feature = "redis")]
pub mod redis;

pub use memory::MemoryStore;

/// A claim attempt: the caller wants to own `key` for `lease`.
#[derive(Debug, Clone, Copy)]
pub struct Claim<'a> {
    /// The store key.
    pub key: &'a str,
    /// The caller's fingerprint, stored with the record.
    pub fingerprint: &'a Fingerprint,
    /// Whether a record with another fingerprint answers [`ClaimReply::Mismatch`].
    pub validate_fingerprint: bool,
    /// The caller's owner token, made before the call.
    pub token: &'a Token,
    /// How long the lease runs.
    pub lease: Duration,
}

/// The owner of a claim, for finishing its operation: who it is (the key and the token,
/// which alone decide whether the write is applied) and how its claim was answered.
///
/// The claim's details let a store recognise a record nobody has touched since that claim
/// and finish it cheaply (the Redis store compares the record with the bytes its claim
/// wrote). They are hints: a store must never apply a write on them that the token would
/// refuse.
#[derive(Debug, Clone, Copy)]
pub struct Owner<'a> {
    /// The store key.
    pub key: &'a str,
    /// The owner token.
    pub token: &'a Token,
    /// The fingerprint the key was claimed with.
    pub fingerprint: &'a Fingerprint,
    /// The fence the claim answered.
    pub fence: u64,
    /// When the claim started, as the claim answered it: its lease end minus its lease.
    pub started_at: Millis,
    /// The lease the claim asked for.
    pub lease: Duration,
    /// Whether the claim took over a lapsed lease.
    pub takeover: bool,
}

/// What a claim found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClaimReply {
    /// The caller owns the key now.
    Acquired {
        /// The fencing number of this ownership.
        fence: u64,
        /// The end of the lease, on the store's clock.
        lease_until: Millis,
        /// Whether a lapsed lease of another owner was taken over.
        takeover: bool,
    },
    /// Another owner holds a live lease.
    Busy {
        /// How long, on the store's clock, until that lease ends (or the record expires, for
        /// a record without a lease).
        remaining: Duration,
    },
    /// The record was made with another fingerprint (only when validating).
    Mismatch {
        /// The stored fingerprint.
        stored: Fingerprint,
    },
    /// The operation finished; here is its record (completed, failed or not replayable).
    Finished(Record),
}

/// How an owner finishes its operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Finish {
    /// Store the response for replay.
    Completed(Response),
    /// Store the error for replay (the *record* failure policy).
    Failed(Response),
    /// The operation succeeded but its result cannot be replayed.
    NotReplayable(String),
}

/// Whether a write that needs the caller's lease was applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseReply {
    /// Applied (or already applied by an earlier try with the same token).
    Applied {
        /// For a renewal, the new end of the lease; for other writes the store's time.
        at: Millis,
    },
    /// The caller no longer owns the key: it was taken over, finished by another owner,
    /// deleted or expired. Nothing was written.
    Lost,
}

/// What a delete did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeleteReply {
    /// The record was removed.
    Deleted,
    /// There was no record.
    NotFound,
    /// The record is still processing and the delete was not forced; nothing changed.
    Processing,
}

/// Where records live. Implement it to add a backend; run the store contract suite in
/// `tests/contract` against the implementation.
///
/// All keys passed in are full store keys (prefix included). Every method is atomic.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Claims `claim.key`: creates a processing record, takes over one whose lease has
    /// lapsed (only when the fingerprints agree or validation is off), or reports what is
    /// there. A record that is processing under `claim.token` already answers `Acquired`:
    /// the caller's earlier attempt landed but its reply was lost.
    async fn claim(&self, claim: Claim<'_>) -> Result<ClaimReply, StoreError>;

    /// Finishes the operation of `owner`, keeping the result for `ttl` from now. Applied
    /// only while the record is processing under the owner's token; a record already
    /// finished under that token with the same outcome counts as applied.
    async fn complete(
        &self,
        owner: &Owner<'_>,
        finish: &Finish,
        ttl: Duration,
    ) -> Result<LeaseReply, StoreError>;

    /// Extends the lease owned by `token` to `lease` from now. A lapsed or lost lease is
    /// never renewed, and a missing record is never recreated.
    async fn renew(
        &self,
        key: &str,
        token: &Token,
        lease: Duration,
    ) -> Result<LeaseReply, StoreError>;

    /// Removes the processing record owned by `token`, so the next call runs at once.
    async fn release(&self, key: &str, token: &Token) -> Result<LeaseReply, StoreError>;

    /// Reads the record.
    async fn get(&self, key: &str) -> Result<Option<Record>, StoreError>;

    /// Removes the record; one that is processing only when `force` is set.
    async fn delete(&self, key: &str, force: bool) -> Result<DeleteReply, StoreError>;

    /// Claims several keys, each with its own claim, and answers in the same order. Each
    /// claim is atomic on its own; the batch is not. The default claims one after another;
    /// stores that can send many commands at once should.
    async fn claim_many(&self, claims: &[Claim<'_>]) -> Vec<Result<ClaimReply, StoreError>> {
        let mut replies = Vec::with_capacity(claims.len());
        for claim in claims {
            replies.push(self.claim(*claim).await);
        }
        replies
    }

    /// Whether [`wait_for_change`](Store::wait_for_change) returns soon after the record
    /// changes. The service then waits for the change (up to the owner's lease end) instead
    /// of claiming again after growing pauses. Default `false`.
    fn notifies(&self) -> bool {
        false
    }

    /// Waits until the record under `key` may have changed, or `timeout` passes, whichever
    /// is first. The service calls it between claim attempts while another owner works.
    /// The default sleeps for `timeout`; stores that can notify should return early.
    async fn wait_for_change(&self, key: &str, timeout: Duration) -> Result<(), StoreError> {
        let _ = key;
        tokio::time::sleep(timeout).await;
        Ok(())
    }
}
