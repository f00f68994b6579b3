//! Batches: many keys claimed at once, each answered as a single call would answer it.
//!
//! The first claims of all items go to the store together. Items that then have to wait
//! (another owner is at work, or a call in this process is claiming the key) wait all at
//! once. Meanwhile the leases the batch already acquired are the batch's to keep alive: it
//! renews them as [`keep_alive`](crate::keep_alive) would, because its caller can start
//! renewing them only once the whole batch has answered. An item answered
//! [`CheckOutcome::Acquired`] therefore always holds a live lease.

use std::future::Future;
use std::pin::Pin;
use std::task::Poll;

use tokio::time::Instant;

use crate::config::{CallOptions, Resolved};
use crate::error::{Error, StoreError};
use crate::fingerprint::Fingerprint;
use crate::flight::{FlightGuard, Role};
use crate::key::{for_message, Key};
use crate::lease::Lease;
use crate::record::Token;
use crate::service::{
    deadline_of, renewal_period, store_error, CheckOutcome, Idempotency, IdempotencyService, Start,
};
use crate::store::{Claim, ClaimReply};

/// One item of [`IdempotencyService::check_and_lock_many`]: a key, its call's fingerprint
/// and options, as [`check_and_lock`](Idempotency::check_and_lock) takes them.
#[derive(Debug, Clone, Copy)]
pub struct BatchItem<'a> {
    /// The key.
    pub key: &'a Key,
    /// The fingerprint of this item's arguments.
    pub fingerprint: &'a Fingerprint,
    /// This item's options.
    pub options: &'a CallOptions,
}

/// An item's call, its options resolved and its key checked.
struct ItemCall {
    store_key: String,
    options: Resolved,
    /// The end of the item's wait budget, counted from the start of the batch.
    deadline: Instant,
}

/// How the batch starts on a valid item.
enum Plan {
    /// Claimed with the others, under `token`; `flight` when the item leads this process's
    /// flight for the key.
    Claim {
        token: Token,
        flight: Option<FlightGuard>,
    },
    /// A call in this process is claiming the key: joined as a single call would.
    Alone,
    /// The key repeats the item at this index: started once that item is answered.
    After(usize),
}

/// An item at work: claiming, or waiting for another owner.
type Working<'w> = Pin<Box<dyn Future<Output = Result<CheckOutcome, Error>> + Send + 'w>>;

/// A lease the batch acquired for an item, renewed until the batch answers.
struct Held {
    index: usize,
    lease: Lease,
    /// When the store last confirmed the lease (its claim or last renewal), on this
    /// process's clock.
    confirmed: Instant,
    /// When to renew it next.
    renew_at: Instant,
}

impl Held {
    fn new(index: usize, lease: Lease) -> Self {
        let now = Instant::now();
        Held {
            index,
            renew_at: now + renewal_period(lease.lock_timeout()),
            lease,
            confirmed: now,
        }
    }

    /// Whether less than a third of the lease may be left, by this process's clock: the
    /// renewals that should have prevented it failed.
    fn is_stale(&self, now: Instant) -> bool {
        self.confirmed + renewal_period(self.lease.lock_timeout()) * 2 <= now
    }
}

/// The answers of a batch so far, and what is still at work.
struct Batch<'w> {
    outcomes: Vec<Option<Result<CheckOutcome, Error>>>,
    working: Vec<(usize, Working<'w>)>,
    held: Vec<Held>,
    /// Repeated keys: `(first, index)`, item `index` waits for item `first`.
    after: Vec<(usize, usize)>,
}

impl IdempotencyService {
    /// Claims or replays many keys at once: each item is answered as
    /// [`check_and_lock`](Idempotency::check_and_lock) would answer it alone, in the order
    /// given.
    ///
    /// The first claims of all items go to the store together ([`Store::claim_many`]; on
    /// Redis one round trip per node), so a batch of replays and fresh keys costs one round
    /// trip, not one per item. Items that then find another owner at work wait as a single
    /// call would (or answer [`CheckOutcome::InProgress`] when their options say not to
    /// wait), all at the same time, each within its own wait budget counted from the start
    /// of the batch. Items whose key a call in this process is claiming join that call.
    ///
    /// While items wait, the leases the batch already acquired are renewed every third of
    /// their lock timeout, as [`keep_alive`](crate::keep_alive) would renew them, so that no
    /// other caller takes them over before the batch answers. A lease lost all the same
    /// (its record was deleted, or the store failed for a whole lease) is claimed again
    /// within the item's budget: an item answered [`CheckOutcome::Acquired`] holds a live
    /// lease. Renew it from then on (run the operation under `keep_alive`).
    ///
    /// A key that appears twice is claimed once: the later item is answered after the
    /// first, and when the first acquired the key, with [`Error::Reentrant`] (waiting would
    /// wait on the batch's own lease).
    ///
    /// [`Store::claim_many`]: crate::Store::claim_many
    pub async fn check_and_lock_many(
        &self,
        items: &[BatchItem<'_>],
    ) -> Vec<Result<CheckOutcome, Error>> {
        let mut outcomes = Vec::with_capacity(items.len());
        let mut plans = Vec::with_capacity(items.len());
        let mut calls = Vec::with_capacity(items.len());
        for index in 0..items.len() {
            match self.plan(items, index) {
                Ok((plan, call)) => {
                    outcomes.push(None);
                    plans.push(Some(plan));
                    calls.push(Some(call));
                }
                Err(error) => {
                    outcomes.push(Some(Err(error)));
                    plans.push(None);
                    calls.push(None);
                }
            }
        }
        let mut replies = self.first_claims(items, &plans, &calls).await.into_iter();

        let mut batch = Batch {
            outcomes,
            working: Vec::new(),
            held: Vec::new(),
            after: Vec::new(),
        };
        for (index, (plan, call)) in plans.into_iter().zip(&calls).enumerate() {
            let (Some(plan), Some(call), item) = (plan, call, &items[index]) else {
                continue;
            };
            let working: Working<'_> = match plan {
                Plan::Claim { token, flight } => {
                    let first = match replies.next() {
                        // Sent again with the same token by the usual path, which the store
                        // recognises if the first attempt landed.
                        Some(Err(StoreError::Connection(_))) | None => None,
                        Some(reply) => Some(Box::new(reply.map_err(|e| store_error(item.key, e)))),
                    };
                    Box::pin(self.lead_from(
                        item.key,
                        &call.store_key,
                        item.fingerprint,
                        call.options,
                        flight,
                        call.deadline,
                        Start { token, first },
                    ))
                }
                Plan::Alone => self.again(item, call),
                Plan::After(first) => {
                    batch.after.push((first, index));
                    continue;
                }
            };
            batch.working.push((index, working));
        }

        loop {
            self.start_repeats(&mut batch, items, &calls);
            if batch.working.is_empty() {
                self.confirm_held(&mut batch, items, &calls).await;
                if batch.working.is_empty() {
                    break;
                }
            }
            let renew_at = batch.held.iter().map(|held| held.renew_at).min();
            tokio::select! {
                biased;
                () = sleep_until(renew_at) => self.renew_held(&mut batch, items, &calls).await,
                (index, outcome) = next_done(&mut batch.working) => match outcome {
                    Ok(CheckOutcome::Acquired(lease)) => batch.held.push(Held::new(index, lease)),
                    outcome => batch.outcomes[index] = Some(outcome),
                },
            }
        }

        for held in batch.held {
            batch.outcomes[held.index] = Some(Ok(CheckOutcome::Acquired(held.lease)));
        }
        batch
            .outcomes
            .into_iter()
            .map(|outcome| outcome.expect("the loop ends only once every item is answered"))
            .collect()
    }

    /// How the batch starts on `items[index]`, or its answer when its key or options are
    /// invalid.
    fn plan(&self, items: &[BatchItem<'_>], index: usize) -> Result<(Plan, ItemCall), Error> {
        let item = &items[index];
        let options = self.resolved(item.key, item.options)?;
        let store_key = self.checked_store_key(item.key)?;
        let deadline = deadline_of(&options);
        let call = ItemCall {
            store_key,
            options,
            deadline,
        };
        if let Some(first) = items[..index].iter().position(|i| i.key == item.key) {
            return Ok((Plan::After(first), call));
        }
        let flight = match options.wait {
            true => {
                let validate = options.validate_fingerprint;
                match self
                    .flights()
                    .enter(&call.store_key, item.fingerprint, validate)
                {
                    Some(Role::Leader(flight)) => Some(flight),
                    Some(Role::Joiner(_)) => return Ok((Plan::Alone, call)),
                    None => None,
                }
            }
            false => None,
        };
        let token = Token::generate();
        Ok((Plan::Claim { token, flight }, call))
    }

    /// Sends the first claim of every item planned as [`Plan::Claim`], together, and
    /// answers their replies in the order of the items.
    async fn first_claims(
        &self,
        items: &[BatchItem<'_>],
        plans: &[Option<Plan>],
        calls: &[Option<ItemCall>],
    ) -> Vec<Result<ClaimReply, StoreError>> {
        let claims: Vec<Claim<'_>> = plans
            .iter()
            .zip(calls)
            .zip(items)
            .filter_map(|((plan, call), item)| match (plan, call) {
                (Some(Plan::Claim { token, .. }), Some(call)) => Some(Claim {
                    key: &call.store_key,
                    fingerprint: item.fingerprint,
                    validate_fingerprint: call.options.validate_fingerprint,
                    token,
                    lease: call.options.lock_timeout,
                }),
                _ => None,
            })
            .collect();
        match claims.is_empty() {
            true => Vec::new(),
            false => self.store().claim_many(&claims).await,
        }
    }

    /// The item as a single call, within its budget: for an item that joins this process's
    /// flight, repeats a key, or lost its lease.
    fn again<'w>(&'w self, item: &'w BatchItem<'_>, call: &'w ItemCall) -> Working<'w> {
        Box::pin(self.call(
            item.key,
            &call.store_key,
            item.fingerprint,
            call.options,
            call.deadline,
        ))
    }

    /// Starts (or answers) the repeats of keys whose first item is answered.
    fn start_repeats<'w>(
        &'w self,
        batch: &mut Batch<'w>,
        items: &'w [BatchItem<'_>],
        calls: &'w [Option<ItemCall>],
    ) {
        let Batch {
            outcomes,
            working,
            held,
            after,
        } = batch;
        after.retain(|&(first, index)| {
            let item = &items[index];
            if held.iter().any(|held| held.index == first) {
                outcomes[index] = Some(Err(Error::Reentrant {
                    key: for_message(item.key),
                }));
                return false;
            }
            if outcomes[first].is_none() {
                return true;
            }
            if let Some(call) = &calls[index] {
                working.push((index, self.again(item, call)));
            }
            false
        });
    }

    /// Renews the held leases that are due. A lease found lost is claimed again.
    async fn renew_held<'w>(
        &'w self,
        batch: &mut Batch<'w>,
        items: &'w [BatchItem<'_>],
        calls: &'w [Option<ItemCall>],
    ) {
        let now = Instant::now();
        let mut at = 0;
        while at < batch.held.len() {
            let held = &mut batch.held[at];
            if held.renew_at > now {
                at += 1;
                continue;
            }
            let period = renewal_period(held.lease.lock_timeout());
            match self.renew(&held.lease).await {
                Ok(()) => {
                    held.confirmed = Instant::now();
                    held.renew_at = held.confirmed + period;
                }
                Err(Error::LeaseLost { .. }) => {
                    let index = batch.held.swap_remove(at).index;
                    self.claim_again(batch, items, calls, index);
                    continue;
                }
                Err(error) => {
                    tracing::warn!(
                        key = %held.lease.key(), %error,
                        "renewing a lease held by a batch failed; retrying"
                    );
                    held.renew_at = Instant::now() + period;
                }
            }
            at += 1;
        }
    }

    /// Before the batch answers: renews once more every held lease whose renewals failed
    /// for most of its length. One found lost is claimed again; one the store cannot
    /// confirm is answered with the store's error and dropped (it lapses).
    async fn confirm_held<'w>(
        &'w self,
        batch: &mut Batch<'w>,
        items: &'w [BatchItem<'_>],
        calls: &'w [Option<ItemCall>],
    ) {
        let mut at = 0;
        while at < batch.held.len() {
            if !batch.held[at].is_stale(Instant::now()) {
                at += 1;
                continue;
            }
            match self.renew(&batch.held[at].lease).await {
                Ok(()) => {
                    batch.held[at].confirmed = Instant::now();
                    at += 1;
                }
                Err(Error::LeaseLost { .. }) => {
                    let index = batch.held.swap_remove(at).index;
                    self.claim_again(batch, items, calls, index);
                }
                Err(error) => {
                    let index = batch.held.swap_remove(at).index;
                    batch.outcomes[index] = Some(self.on_store_error(error));
                }
            }
        }
    }

    fn claim_again<'w>(
        &'w self,
        batch: &mut Batch<'w>,
        items: &'w [BatchItem<'_>],
        calls: &'w [Option<ItemCall>],
        index: usize,
    ) {
        let item = &items[index];
        tracing::info!(key = %item.key, "a lease held by a batch was lost; claiming the key again");
        if let Some(call) = &calls[index] {
            batch.working.push((index, self.again(item, call)));
        }
    }
}

/// Sleeps until `at`, or forever when there is nothing to wake for.
async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Waits for the first item of `working` to finish, and takes it out.
async fn next_done(
    working: &mut Vec<(usize, Working<'_>)>,
) -> (usize, Result<CheckOutcome, Error>) {
    std::future::poll_fn(|cx| {
        for at in 0..working.len() {
            if let Poll::Ready(outcome) = working[at].1.as_mut().poll(cx) {
                let (index, _) = working.swap_remove(at);
                return Poll::Ready((index, outcome));
            }
        }
        Poll::Pending
    })
    .await
}
