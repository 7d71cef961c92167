//! The tally of one refresh's crossing of Hawkeye's probes with Bruin's verdicts: what was
//! kept, dropped and why, what failed. Pure: no I/O.

use std::collections::{BTreeMap, HashSet};

use super::rules::{ClientInfo, DropReason, KeptDevice};
use crate::apis::ApiError;

/// What a successful refresh did, for the log, the metrics and `refresh_succeeded`.
#[derive(Debug, Default)]
pub struct Crossing {
    pub probes: usize,
    /// Probes with a last contact: the devices checked in Bruin.
    pub contacted: usize,
    pub dropped: BTreeMap<DropReason, usize>,
    /// Contacted devices that could not be checked because of errors.
    pub errors: usize,
    pub last_error: Option<String>,
    /// Serials with several active inventories: every client, the first one used.
    pub multiple_inventories: BTreeMap<String, Vec<ClientInfo>>,
    /// Kept devices in probe order, one per serial number.
    pub kept: Vec<KeptDevice>,
}

/// The Bruin verdict on one contacted device.
pub enum Verdict {
    Kept(Box<KeptDevice>),
    Dropped(DropReason),
    Failed(ApiError),
}

pub struct DeviceCheck {
    /// Position of the probe in Hawkeye's list, to keep the result independent of which
    /// Bruin answer came first.
    pub index: usize,
    pub verdict: Verdict,
    pub multiple_inventories: Option<(String, Vec<ClientInfo>)>,
}

impl Crossing {
    pub fn new(probes: usize) -> Self {
        Crossing {
            probes,
            ..Crossing::default()
        }
    }

    pub fn drop_device(&mut self, reason: DropReason) {
        *self.dropped.entry(reason).or_default() += 1;
    }

    /// Adds the checks of the contacted devices, in any order.
    pub fn add_checks(&mut self, mut checks: Vec<DeviceCheck>) {
        checks.sort_by_key(|check| check.index);
        let mut serials = HashSet::new();
        for check in checks {
            self.contacted += 1;
            if let Some((serial, clients)) = check.multiple_inventories {
                self.multiple_inventories.insert(serial, clients);
            }
            match check.verdict {
                // The cache is keyed by serial: a repeated serial keeps its first probe.
                Verdict::Kept(device) if serials.insert(device.serial().to_string()) => {
                    self.kept.push(*device)
                }
                Verdict::Kept(_) => {}
                Verdict::Dropped(reason) => self.drop_device(reason),
                Verdict::Failed(error) => {
                    self.errors += 1;
                    self.last_error = Some(error.to_string());
                }
            }
        }
    }

    /// More than `max_ratio` of the contacted devices could not be checked.
    pub fn too_many_errors(&self, max_ratio: f64) -> bool {
        self.errors as f64 > max_ratio * self.contacted as f64
    }

    /// One readable line: probes, contacted, kept, dropped per reason, errors.
    pub fn summary(&self) -> String {
        let dropped: Vec<String> = self
            .dropped
            .iter()
            .map(|(reason, count)| format!("{}={count}", reason.name()))
            .collect();
        format!(
            "{} probes, {} contacted, {} kept, dropped [{}], {} errors, {} serials with multiple inventories",
            self.probes,
            self.contacted,
            self.kept.len(),
            dropped.join(" "),
            self.errors,
            self.multiple_inventories.len()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apis::hawkeye::LastUpdate;
    use crate::apis::Probe;
    use crate::cache::rules;
    use serde_json::json;

    fn kept(serial: &str) -> Verdict {
        let probe = Probe {
            probe_id: json!(1),
            uid: json!("u"),
            probe_group: json!("g"),
            type_name: json!("t"),
            serial_number: serial.into(),
            nodetonode: Some(LastUpdate {
                last_update: Some("2024-01-01T00:00:00Z".into()),
            }),
            realservice: None,
        };
        Verdict::Kept(Box::new(KeptDevice {
            last_contact: rules::last_contact(&probe).unwrap(),
            probe,
            client: ClientInfo {
                client_id: json!(1),
                client_name: json!("c"),
                site_id: json!(2),
            },
            management_status: "Pending".into(),
        }))
    }

    fn check(index: usize, verdict: Verdict) -> DeviceCheck {
        DeviceCheck {
            index,
            verdict,
            multiple_inventories: None,
        }
    }

    fn failed() -> Verdict {
        Verdict::Failed(ApiError::Timeout {
            api: "bruin_inventory",
        })
    }

    #[test]
    fn checks_are_ordered_by_probe_and_a_repeated_serial_keeps_its_first_probe() {
        let mut crossing = Crossing::new(5);
        crossing.drop_device(DropReason::NeverContacted);
        crossing.add_checks(vec![
            check(3, kept("B")),
            check(4, kept("A")),
            check(1, kept("A")),
            check(2, Verdict::Dropped(DropReason::NotMonitorable)),
        ]);
        let serials: Vec<&str> = crossing.kept.iter().map(KeptDevice::serial).collect();
        assert_eq!(serials, ["A", "B"]);
        assert_eq!(crossing.contacted, 4);
        assert_eq!(crossing.dropped[&DropReason::NotMonitorable], 1);
        assert_eq!(crossing.dropped[&DropReason::NeverContacted], 1);
        assert_eq!(crossing.errors, 0);
    }

    #[test]
    fn the_error_ratio_is_over_the_contacted_devices_and_strictly_above() {
        let mut crossing = Crossing::new(30);
        let mut checks: Vec<DeviceCheck> =
            (0..19).map(|i| check(i, kept(&i.to_string()))).collect();
        checks.push(check(19, failed()));
        crossing.add_checks(checks);
        assert_eq!(crossing.errors, 1);
        // 1 of 20 is exactly 5 %: allowed.
        assert!(!crossing.too_many_errors(0.05));
        assert!(crossing.too_many_errors(0.04));
        assert!(crossing
            .last_error
            .as_deref()
            .unwrap()
            .contains("timed out"));
    }

    #[test]
    fn multiple_inventories_are_reported_even_when_the_device_fails_later() {
        let mut crossing = Crossing::new(1);
        let clients = vec![ClientInfo {
            client_id: json!(1),
            client_name: json!("c"),
            site_id: json!(2),
        }];
        crossing.add_checks(vec![DeviceCheck {
            index: 0,
            verdict: failed(),
            multiple_inventories: Some(("S".into(), clients.clone())),
        }]);
        assert_eq!(crossing.multiple_inventories["S"], clients);
        assert!(crossing.summary().contains("1 errors"));
    }
}
