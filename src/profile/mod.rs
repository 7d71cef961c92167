//! Device profiles: the update every writer produces (events and the refresh), and the rules
//! that make writes order-independent.

pub mod event;
pub mod fields;
pub mod merge;
pub mod pipeline;
pub mod publish;
pub mod update;

pub use update::{LastContact, ProfileUpdate, TextField};
