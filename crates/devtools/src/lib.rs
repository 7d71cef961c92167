//! Test and benchmark tooling of hawkeye-customer-cache, kept out of the service library: the
//! Hawkeye/Bruin simulator ([`sim`]), the benchmark harness ([`bench`]) and the isolated
//! service instances both they and the integration tests run ([`service`]).

pub mod bench;
pub mod service;
pub mod sim;
