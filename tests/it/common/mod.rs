//! Helpers of these tests alone; what they share with the fault suite is in
//! `hawkeye_devtools::testkit`.

pub mod apis;
pub mod proxy;
