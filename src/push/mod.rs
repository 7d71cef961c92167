//! The device profile push (`CONTRACT.md` §3): the job that writes device profile events into
//! both stores ([`pipeline`]), and what it tells the rest of the service.

pub mod pipeline;

use futures::future::BoxFuture;

use crate::profile::ProfileUpdate;
use crate::stores::StoreError;

/// Where the push hands the `last_contact`s of the updates it stored, once both stores have
/// them: the one thing the push tells the rest of the service (`service.rs` wires the customer
/// cache in, which reflects a newer last contact at once, `CONTRACT.md` §4).
pub trait LastContactSink: Send + Sync {
    /// Takes the `last_contact` of every update that carries one. May be called again with the
    /// same updates (a retry, a replay): only a later instant may change anything.
    fn push<'a>(&'a self, updates: &'a [ProfileUpdate]) -> BoxFuture<'a, Result<(), StoreError>>;
}
