//! Device profiles, the model: the update every writer produces (events and the refresh), the
//! field table, and the rules that make writes order-independent. Pure: no I/O.

pub mod event;
pub mod fields;
pub mod merge;
pub mod update;

pub use update::{LastContact, ProfileUpdate, TextField};
