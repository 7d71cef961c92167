//! Test and benchmark tooling of hawkeye-customer-cache, kept out of the service library: the
//! Hawkeye/Bruin simulator ([`sim`]), the benchmark harness ([`mod@bench`]), the isolated
//! service instances both it and the test suites run ([`service`]), and the helpers the
//! integration tests and the fault suite share ([`testkit`]).

pub mod bench;
pub mod service;
pub mod sim;
pub mod testkit;
