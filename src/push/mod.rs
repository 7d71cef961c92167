//! The device profile push (`CONTRACT.md` §3): the job that writes device profile events into
//! both stores ([`pipeline`]), and what it tells the rest of the service.

pub mod pipeline;
#[cfg(test)]
mod tests;

use std::time::Duration;

use futures::future::BoxFuture;
use rdkafka::message::OwnedMessage;

use crate::kafka::ingress::Ingress;
use crate::profile::ProfileUpdate;
use crate::stores::profiles::Upserted;
use crate::stores::{ProfileStores, StoreError};

/// Where the push's events come from, and where it says which are done: the profile topics'
/// consumer ([`Ingress`]) in the service, a list of batches in the unit tests.
pub trait EventSource: Send + Sync {
    /// The next batch of at most `max` records, waiting for the first.
    fn next_batch(&self, max: usize) -> BoxFuture<'_, Vec<OwnedMessage>>;
    /// The record's work is done: its offset may be committed once the ones before it are.
    fn acknowledge(&self, record: &OwnedMessage);
    /// Waits `delay` with the partitions paused, the instance staying in its group.
    fn poll_while_paused(&self, delay: Duration) -> BoxFuture<'_, ()>;
    /// Resumes the partitions after [`Self::poll_while_paused`].
    fn resume(&self);
    /// Commits the acknowledged offsets now (at shutdown).
    fn commit(&self);
}

impl EventSource for Ingress {
    fn next_batch(&self, max: usize) -> BoxFuture<'_, Vec<OwnedMessage>> {
        Box::pin(Ingress::next_batch(self, max))
    }
    fn acknowledge(&self, record: &OwnedMessage) {
        Ingress::acknowledge(self, record)
    }
    fn poll_while_paused(&self, delay: Duration) -> BoxFuture<'_, ()> {
        Box::pin(Ingress::poll_while_paused(self, delay))
    }
    fn resume(&self) {
        Ingress::resume(self)
    }
    fn commit(&self) {
        Ingress::commit(self)
    }
}

/// The stores as the push writes them: both at once ([`ProfileStores`]) in the service, a store
/// that refuses chosen devices in the unit tests.
pub trait ProfileWrites: Send + Sync {
    /// One attempt at every update: per update in order, what the stores did with it; an
    /// error when the whole call failed ([`ProfileStores::upsert`]).
    fn upsert<'a>(
        &'a self,
        updates: &'a [ProfileUpdate],
    ) -> BoxFuture<'a, Result<Vec<Upserted>, StoreError>>;
}

impl ProfileWrites for ProfileStores {
    fn upsert<'a>(
        &'a self,
        updates: &'a [ProfileUpdate],
    ) -> BoxFuture<'a, Result<Vec<Upserted>, StoreError>> {
        Box::pin(ProfileStores::upsert(self, updates))
    }
}

/// Where the push hands the `last_contact`s of the updates it stored, once both stores have
/// them: the one thing the push tells the rest of the service (`service.rs` wires the customer
/// cache in, which reflects a newer last contact at once, `CONTRACT.md` §4).
pub trait LastContactSink: Send + Sync {
    /// Takes the `last_contact` of every update that carries one. May be called again with the
    /// same updates (a retry, a replay): only a later instant may change anything.
    fn push<'a>(&'a self, updates: &'a [ProfileUpdate]) -> BoxFuture<'a, Result<(), StoreError>>;
}
