//! Device profiles: the update every writer produces (events and the refresh), and the rules
//! that make writes order-independent.

pub mod event;
pub mod fields;
pub mod merge;
pub mod pipeline;
pub mod publish;
pub mod update;

use futures::future::BoxFuture;

pub use update::{LastContact, ProfileUpdate, TextField};

use crate::stores::StoreError;

/// Where the push hands the `last_contact`s of the updates it stored, once both stores have
/// them: the one thing the push tells the rest of the service (`service.rs` wires the customer
/// cache in, which reflects a newer last contact at once, `CONTRACT.md` §4).
pub trait LastContactSink: Send + Sync {
    /// Takes the `last_contact` of every update that carries one. May be called again with the
    /// same updates (a retry, a replay): only a later instant may change anything.
    fn push<'a>(&'a self, updates: &'a [ProfileUpdate]) -> BoxFuture<'a, Result<(), StoreError>>;
}
