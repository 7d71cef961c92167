//! The simulated fleet: every probe Hawkeye knows, every inventory document and management
//! status Bruin knows, generated from a seed. Each device is drawn into one [`Category`] first
//! and its API data is then made to fit it, so the expected customer cache comes from the
//! categories themselves, not from re-running the crossing rules.

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Duration as ChronoDuration, TimeZone, Utc};
use rand::rngs::StdRng;
use rand::seq::IndexedRandom;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};

/// The shares of each kind of device; the rest are kept in the cache.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FleetShape {
    pub seed: u64,
    pub devices: usize,
    pub never_contacted_ratio: f64,
    pub no_inventory_ratio: f64,
    pub inactive_ratio: f64,
    pub serial_mismatch_ratio: f64,
    pub unmonitorable_ratio: f64,
    /// Share of all devices that are kept and have more than one active inventory.
    pub multiple_inventories_ratio: f64,
}

/// What the crossing rules of `CONTRACT.md` §4 should do with a device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Category {
    /// Both `lastUpdate` values are `"never"` (or the object is missing): skipped.
    NeverContacted,
    /// Bruin has no document for the serial: dropped.
    NoInventory,
    /// Only `"D"` documents: dropped.
    Inactive,
    /// The only active document's `serviceNumber` differs from the serial: dropped.
    SerialMismatch,
    /// A valid document, but a management status outside the monitorable ones (or none).
    Unmonitorable,
    /// A valid document and a monitorable management status: in the cache.
    Monitorable,
}

/// A client of the inventory: `client_id` and `site_id` are JSON numbers, as Bruin sends them.
#[derive(Debug, Clone, PartialEq)]
pub struct ClientInfo {
    pub client_id: u64,
    pub client_name: String,
    pub site_id: u64,
}

impl ClientInfo {
    pub fn to_json(&self) -> Value {
        json!({"client_id": self.client_id, "client_name": self.client_name, "site_id": self.site_id})
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Device {
    pub category: Category,
    pub serial: String,
    /// The probe record exactly as `GET /probes` sends it.
    pub probe: Value,
    /// The documents `GET /api/Inventory` answers for the serial, in order.
    pub documents: Vec<Value>,
    /// Management status by client id (`None`: the attribute is absent).
    pub management_statuses: Vec<(u64, Option<String>)>,
    /// The later `lastUpdate`, as generated; `None` when never contacted.
    pub last_contact: Option<String>,
    /// The client of the first valid document (Monitorable and Unmonitorable devices).
    pub client: Option<ClientInfo>,
    pub multiple_inventories: bool,
}

impl Device {
    pub fn management_status(&self, client_id: &str) -> Option<&str> {
        self.management_statuses
            .iter()
            .find(|(id, _)| id.to_string() == client_id)
            .and_then(|(_, status)| status.as_deref())
    }

    /// The cache entry of `CONTRACT.md` §4, built from the generated values.
    pub fn cache_entry(&self, client: &ClientInfo) -> Value {
        json!({
            "probe_id": self.probe["probeId"],
            "probe_uid": self.probe["uid"],
            "probe_group": self.probe["probeGroup"],
            "device_type_name": self.probe["typeName"],
            "last_contact": self.last_contact,
            "serial_number": self.serial,
            "bruin_client_info": client.to_json(),
        })
    }
}

pub const MONITORABLE_STATUSES: [&str; 3] = [
    "Active \u{2013} Gold Monitoring",
    "Active \u{2013} Platinum Monitoring",
    "Pending",
];
/// Statuses that must not be monitored; the hyphenated ones trap a comparison that ignores
/// the EN DASH.
const UNMONITORABLE_STATUSES: [&str; 4] = [
    "Inactive",
    "Active - Gold Monitoring",
    "Active - Platinum Monitoring",
    "Cancelled",
];
const PROBE_GROUPS: [&str; 5] = [
    "FIS",
    "MetTel_Lab",
    "Retail_East",
    "Banking",
    "Healthcare_West",
];
const COMPANIES: [&str; 8] = [
    "METTEL",
    "ACME CORP",
    "GLOBEX",
    "INITECH",
    "UMBRELLA",
    "HOOLI",
    "STARK IND",
    "WAYNE ENT",
];
const CITIES: [&str; 6] = [
    "NEW YORK", "CHICAGO", "DALLAS", "MIAMI", "SEATTLE", "DENVER",
];

#[derive(Debug, Clone, PartialEq)]
pub struct Fleet {
    pub devices: Vec<Device>,
    by_serial: HashMap<String, usize>,
}

impl Fleet {
    pub fn generate(shape: &FleetShape) -> Fleet {
        let mut rng = StdRng::seed_from_u64(shape.seed);
        let clients = clients(&mut rng);
        let serials = unique_serials(&mut rng, shape.devices);
        let devices: Vec<Device> = serials
            .into_iter()
            .enumerate()
            .map(|(index, serial)| {
                let category = draw_category(&mut rng, shape);
                let multiple = category == Category::Monitorable
                    && rng.random_bool(multiple_share_of_kept(shape));
                generate_device(&mut rng, &clients, index, serial, category, multiple)
            })
            .collect();
        let by_serial = devices
            .iter()
            .enumerate()
            .map(|(i, d)| (d.serial.clone(), i))
            .collect();
        Fleet { devices, by_serial }
    }

    pub fn device(&self, serial: &str) -> Option<&Device> {
        self.by_serial
            .get(serial)
            .map(|&index| &self.devices[index])
    }
}

/// Categories are drawn in this order from one uniform number, so each gets its ratio.
fn draw_category(rng: &mut StdRng, shape: &FleetShape) -> Category {
    let draw: f64 = rng.random();
    let bands = [
        (shape.never_contacted_ratio, Category::NeverContacted),
        (shape.no_inventory_ratio, Category::NoInventory),
        (shape.inactive_ratio, Category::Inactive),
        (shape.serial_mismatch_ratio, Category::SerialMismatch),
        (shape.unmonitorable_ratio, Category::Unmonitorable),
    ];
    let mut upper = 0.0;
    for (ratio, category) in bands {
        upper += ratio;
        if draw < upper {
            return category;
        }
    }
    Category::Monitorable
}

fn multiple_share_of_kept(shape: &FleetShape) -> f64 {
    let dropped = shape.never_contacted_ratio
        + shape.no_inventory_ratio
        + shape.inactive_ratio
        + shape.serial_mismatch_ratio
        + shape.unmonitorable_ratio;
    let kept = 1.0 - dropped;
    if kept <= 0.0 {
        0.0
    } else {
        (shape.multiple_inventories_ratio / kept).clamp(0.0, 1.0)
    }
}

fn clients(rng: &mut StdRng) -> Vec<(u64, String)> {
    let mut ids = HashSet::new();
    COMPANIES
        .iter()
        .flat_map(|company| CITIES.iter().map(move |city| format!("{company}/{city}")))
        .map(|name| loop {
            let id = rng.random_range(1000..100_000);
            if ids.insert(id) {
                break (id, name.clone());
            }
        })
        .collect()
}

/// Raspberry Pi probes: serial = the MAC without colons, under the `B8:27:EB` vendor prefix.
fn unique_serials(rng: &mut StdRng, count: usize) -> Vec<String> {
    let mut seen = HashSet::with_capacity(count);
    let mut serials = Vec::with_capacity(count);
    while serials.len() < count {
        let suffix: u32 = rng.random_range(0..0x100_0000);
        if seen.insert(suffix) {
            serials.push(format!("B827EB{suffix:06X}"));
        }
    }
    serials
}

fn generate_device(
    rng: &mut StdRng,
    clients: &[(u64, String)],
    index: usize,
    serial: String,
    category: Category,
    multiple_inventories: bool,
) -> Device {
    let contact = contact_times(rng, category == Category::NeverContacted);
    let probe = probe_record(rng, index, &serial, &contact);
    let mut device = Device {
        category,
        serial,
        probe,
        documents: Vec::new(),
        management_statuses: Vec::new(),
        last_contact: contact.last_contact,
        client: None,
        multiple_inventories,
    };
    add_inventory(rng, clients, &mut device);
    device
}

struct Contact {
    nodetonode: Option<String>,
    realservice: Option<String>,
    last_contact: Option<String>,
}

/// Timestamps end before this fixed instant, so a seed always gives the same fleet.
fn anchor() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2025, 6, 1, 0, 0, 0)
        .single()
        .unwrap_or_default()
}

fn timestamp(instant: DateTime<Utc>) -> String {
    instant.format("%Y-%m-%dT%H:%M:%SZ").to_string()
}

/// The two `lastUpdate` values (`None`: the object is missing). The later one is drawn first,
/// so the device knows its `last_contact` by construction.
fn contact_times(rng: &mut StdRng, never_contacted: bool) -> Contact {
    let never = || Some("never".to_string());
    if never_contacted {
        let realservice = if rng.random_bool(0.8) { never() } else { None };
        return Contact {
            nodetonode: never(),
            realservice,
            last_contact: None,
        };
    }
    let latest = anchor() - ChronoDuration::seconds(rng.random_range(0..365 * 86_400));
    let earlier = latest - ChronoDuration::seconds(rng.random_range(1..30 * 86_400));
    let (latest, earlier) = (Some(timestamp(latest)), Some(timestamp(earlier)));
    let (nodetonode, realservice) = match rng.random_range(0..100) {
        0..30 => (latest.clone(), earlier),
        30..60 => (earlier, latest.clone()),
        60..80 => (latest.clone(), never()),
        80..95 => (never(), latest.clone()),
        _ => (latest.clone(), None),
    };
    Contact {
        nodetonode,
        realservice,
        last_contact: latest,
    }
}

fn probe_record(rng: &mut StdRng, index: usize, serial: &str, contact: &Contact) -> Value {
    let mac = serial
        .as_bytes()
        .chunks(2)
        .map(|pair| String::from_utf8_lossy(pair).to_ascii_lowercase())
        .collect::<Vec<_>>()
        .join(":");
    let group = PROBE_GROUPS.choose(rng).copied().unwrap_or("FIS");
    let mut record = json!({
        "probeId": (index + 1).to_string(),
        "uid": mac,
        "os": "Linux",
        "name": format!("{group}_{serial}"),
        "testIp": "none",
        "managementIp": "none",
        "active": "1",
        "type": "8",
        "mode": "Automatic",
        "n2nMode": "1",
        "rsMode": "1",
        "typeName": "xr_pi",
        "serialNumber": serial,
        "probeGroup": group,
        "location": "",
        "latitude": "0",
        "longitude": "0",
        "endpointVersion": "9.6 SP1 build 121",
        "xrVersion": "4.2.2.10681008",
        "defaultInterface": "eth0",
        "defaultGateway": "192.168.90.99",
        "availableForMesh": "1",
        "availability": {"from": 1, "to": 1, "mesh": "1"},
        "ips": [format!("192.168.{}.{}", rng.random_range(0..255), rng.random_range(1..255))],
        "userGroups": ["1", "10"],
    });
    if let Some(last_update) = &contact.nodetonode {
        record["nodetonode"] = json!({"status": 0, "lastUpdate": last_update});
    }
    if let Some(last_update) = &contact.realservice {
        record["realservice"] = json!({"status": 0, "lastUpdate": last_update});
    }
    record
}

/// Fills the documents and statuses that make Bruin answer as the category says.
fn add_inventory(rng: &mut StdRng, clients: &[(u64, String)], device: &mut Device) {
    let serial = device.serial.clone();
    let pick = |rng: &mut StdRng| {
        let (client_id, name) = clients
            .choose(rng)
            .cloned()
            .unwrap_or((9994, "METTEL/NEW YORK".into()));
        ClientInfo {
            client_id,
            client_name: name,
            site_id: rng.random_range(1..100_000),
        }
    };
    match device.category {
        Category::NeverContacted | Category::NoInventory => {}
        Category::Inactive => {
            for _ in 0..rng.random_range(1..=2) {
                let client = pick(rng);
                device.documents.push(document(rng, &client, "D", &serial));
            }
        }
        Category::SerialMismatch => {
            let other = if rng.random_bool(0.5) {
                serial.to_ascii_lowercase()
            } else {
                format!("{serial}-OLD")
            };
            let client = pick(rng);
            device.documents.push(document(rng, &client, "A", &other));
        }
        Category::Unmonitorable => {
            let client = pick(rng);
            let status = UNMONITORABLE_STATUSES.choose(rng).map(|s| s.to_string());
            // One in five has no Management Status attribute at all.
            let status = if rng.random_bool(0.2) { None } else { status };
            add_valid_document(rng, device, client, status);
        }
        Category::Monitorable => {
            let client = pick(rng);
            let status = MONITORABLE_STATUSES.choose(rng).map(|s| s.to_string());
            add_valid_document(rng, device, client, status);
            if device.multiple_inventories {
                let second = pick(rng);
                let status = MONITORABLE_STATUSES.choose(rng).map(|s| s.to_string());
                device.documents.push(document(rng, &second, "A", &serial));
                device.management_statuses.push((second.client_id, status));
            }
        }
    }
}

/// Sometimes preceded by a disconnected ("D") document of an earlier client, so the first
/// document is not always the one to use.
fn add_valid_document(
    rng: &mut StdRng,
    device: &mut Device,
    client: ClientInfo,
    status: Option<String>,
) {
    let serial = device.serial.clone();
    if rng.random_bool(0.2) {
        let former = ClientInfo {
            client_id: client.client_id + 1,
            ..client.clone()
        };
        device.documents.push(document(rng, &former, "D", &serial));
    }
    device.documents.push(document(rng, &client, "A", &serial));
    device.management_statuses.push((client.client_id, status));
    device.client = Some(client);
}

fn document(rng: &mut StdRng, client: &ClientInfo, status: &str, service_number: &str) -> Value {
    json!({
        "clientID": client.client_id,
        "clientName": client.client_name,
        "vendor": "Raspberry Pi",
        "accountNumber": format!("{}", rng.random_range(10_000_000..99_999_999)),
        "subAccountNumber": Value::Null,
        "inventoryID": rng.random_range(1_000_000..99_999_999),
        "serialNumber": service_number,
        "siteId": client.site_id,
        "siteLabel": format!("Site {}", client.site_id),
        "address": {"address": "55 Water Mill Rd", "city": "New York", "state": "NY", "zip": "10001", "country": "USA"},
        "description": Value::Null,
        "installDate": "2019-08-14T00:00:00Z",
        "disconnectDate": if status == "D" { json!("2020-01-31T00:00:00Z") } else { Value::Null },
        "status": status,
        "verbalNetOrderID": "",
        "netOrderID": Value::Null,
        "serviceNumber": service_number,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shape(seed: u64) -> FleetShape {
        FleetShape {
            seed,
            devices: 2000,
            never_contacted_ratio: 0.1,
            no_inventory_ratio: 0.05,
            inactive_ratio: 0.05,
            serial_mismatch_ratio: 0.02,
            unmonitorable_ratio: 0.1,
            multiple_inventories_ratio: 0.02,
        }
    }

    fn count(fleet: &Fleet, category: Category) -> usize {
        fleet
            .devices
            .iter()
            .filter(|d| d.category == category)
            .count()
    }

    #[test]
    fn a_seed_always_gives_the_same_fleet() {
        assert_eq!(Fleet::generate(&shape(7)), Fleet::generate(&shape(7)));
        assert_ne!(
            Fleet::generate(&shape(7)).devices,
            Fleet::generate(&shape(8)).devices
        );
    }

    #[test]
    fn categories_follow_the_ratios() {
        let fleet = Fleet::generate(&shape(1));
        let never = count(&fleet, Category::NeverContacted);
        assert!(
            (150..=250).contains(&never),
            "{never} never contacted of 2000"
        );
        let kept = count(&fleet, Category::Monitorable);
        assert!((1250..=1500).contains(&kept), "{kept} monitorable of 2000");
        let multiple = fleet
            .devices
            .iter()
            .filter(|d| d.multiple_inventories)
            .count();
        assert!(
            (15..=70).contains(&multiple),
            "{multiple} with multiple inventories"
        );
    }

    #[test]
    fn serials_are_unique_and_match_the_uid() {
        let fleet = Fleet::generate(&shape(3));
        let serials: HashSet<&str> = fleet.devices.iter().map(|d| d.serial.as_str()).collect();
        assert_eq!(serials.len(), fleet.devices.len());
        let device = &fleet.devices[0];
        let uid = device.probe["uid"].as_str().unwrap();
        assert_eq!(uid.replace(':', "").to_ascii_uppercase(), device.serial);
        assert!(uid.starts_with("b8:27:eb:"));
    }

    #[test]
    fn last_contact_is_the_later_of_the_two_last_updates() {
        let fleet = Fleet::generate(&shape(4));
        for device in &fleet.devices {
            let updates: Vec<&str> = ["nodetonode", "realservice"]
                .iter()
                .filter_map(|key| device.probe[key]["lastUpdate"].as_str())
                .filter(|value| *value != "never")
                .collect();
            // RFC 3339 UTC with a `Z` and whole seconds sorts as text in time order.
            assert_eq!(
                device.last_contact.as_deref(),
                updates.iter().max().copied()
            );
        }
    }

    #[test]
    fn monitorable_devices_carry_en_dash_statuses_and_a_valid_document() {
        let fleet = Fleet::generate(&shape(5));
        for device in fleet
            .devices
            .iter()
            .filter(|d| d.category == Category::Monitorable)
        {
            let client = device.client.as_ref().unwrap();
            let status = device
                .management_status(&client.client_id.to_string())
                .unwrap();
            assert!(MONITORABLE_STATUSES.contains(&status));
            let valid = device
                .documents
                .iter()
                .find(|doc| doc["status"] == "A" && doc["serviceNumber"] == device.serial.as_str())
                .unwrap();
            assert_eq!(valid["clientID"], client.client_id);
        }
    }
}
