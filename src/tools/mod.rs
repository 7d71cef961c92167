//! The operator commands' code (`hawkeye-customer-cache profile …`): checking and repairing
//! the stores against each other, rebuilding Redis from Cassandra, replaying dead letters,
//! publishing events by hand. The service itself never runs these.

pub mod publish;
pub mod rebuild;
pub mod replay_dlq;
pub mod verify;
