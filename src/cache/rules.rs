//! The crossing rules of the refresh (`CONTRACT.md` §4), without I/O: which probes count as
//! contacted, which Bruin documents count, which devices are monitorable, and the exact shape
//! of a cache entry and of the device profile update of a kept device.

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::{json, Value};

use crate::apis::bruin::InventoryDocument;
use crate::apis::hawkeye::Probe;
use crate::profile::{LastContact, ProfileUpdate, TextField};

/// Why a probe is not in the cache (beyond devices that could not be checked because of errors).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum DropReason {
    /// Both `lastUpdate` values are `"never"` or missing.
    NeverContacted,
    /// No Bruin document with status `"A"` and the probe's serial number.
    NoActiveInventory,
    /// The management status is missing or not one of `MONITORABLE_MANAGEMENT_STATUSES`.
    NotMonitorable,
}

impl DropReason {
    pub fn name(self) -> &'static str {
        match self {
            DropReason::NeverContacted => "never_contacted",
            DropReason::NoActiveInventory => "no_active_inventory",
            DropReason::NotMonitorable => "not_monitorable",
        }
    }
}

/// The later of the probe's two `lastUpdate` values ([`Probe::last_contact`]: `"never"`,
/// missing and unreadable values are ignored), with its instant; `None` when the probe was
/// never contacted. The text stays as the API sent it.
pub fn last_contact(probe: &Probe) -> Option<LastContact> {
    let text = probe.last_contact()?;
    let at = DateTime::parse_from_rfc3339(text).ok()?.with_timezone(&Utc);
    Some(LastContact {
        at,
        text: text.to_string(),
    })
}

/// The documents that describe the device: active (`"A"`) and for exactly this serial number.
pub fn active_documents<'a>(
    serial: &str,
    documents: &'a [InventoryDocument],
) -> Vec<&'a InventoryDocument> {
    documents
        .iter()
        .filter(|doc| doc.status.as_deref() == Some("A"))
        .filter(|doc| doc.service_number.as_deref() == Some(serial))
        .collect()
}

/// Exact comparison: the configured statuses carry an EN DASH that a hyphen must not match.
pub fn is_monitorable(status: &str, monitorable: &[String]) -> bool {
    monitorable.iter().any(|allowed| allowed == status)
}

/// The client a device belongs to, with the types Bruin sent.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ClientInfo {
    pub client_id: Value,
    pub client_name: Value,
    pub site_id: Value,
}

impl From<&InventoryDocument> for ClientInfo {
    fn from(doc: &InventoryDocument) -> Self {
        ClientInfo {
            client_id: doc.client_id.clone(),
            client_name: doc.client_name.clone(),
            site_id: doc.site_id.clone(),
        }
    }
}

/// A device that passed every rule.
#[derive(Debug, Clone)]
pub struct KeptDevice {
    pub probe: Probe,
    pub last_contact: LastContact,
    pub client: ClientInfo,
    pub management_status: String,
}

impl KeptDevice {
    pub fn serial(&self) -> &str {
        &self.probe.serial_number
    }

    /// The cache entry: exactly the keys of `CONTRACT.md` §4, values as the APIs sent them.
    pub fn cache_entry(&self) -> Value {
        json!({
            "probe_id": self.probe.probe_id,
            "probe_uid": self.probe.uid,
            "probe_group": self.probe.probe_group,
            "device_type_name": self.probe.type_name,
            "last_contact": self.last_contact.text,
            "serial_number": self.probe.serial_number,
            "bruin_client_info": self.client,
        })
    }

    /// The device profile update carrying the device's Hawkeye fields; `version` is the
    /// refresh's start (epoch ms).
    pub fn profile_update(&self, version: i64) -> ProfileUpdate {
        let text = [
            (
                TextField::SerialNumber,
                Some(self.probe.serial_number.clone()),
            ),
            (TextField::ProbeId, json_text(&self.probe.probe_id)),
            (TextField::ProbeUid, json_text(&self.probe.uid)),
            (TextField::ProbeGroup, json_text(&self.probe.probe_group)),
            (TextField::DeviceTypeName, json_text(&self.probe.type_name)),
            (TextField::ClientName, json_text(&self.client.client_name)),
            (
                TextField::ManagementStatus,
                Some(self.management_status.clone()),
            ),
        ]
        .into_iter()
        .filter_map(|(field, value)| Some((field, value.filter(|v| !v.is_empty())?)))
        .collect();
        ProfileUpdate {
            device_id: self.probe.serial_number.clone(),
            version,
            text,
            client_id: integer(&self.client.client_id),
            site_id: integer(&self.client.site_id),
            last_contact: Some(self.last_contact.clone()),
            ..ProfileUpdate::default()
        }
    }
}

/// A JSON string's content, any other value as its JSON text; `null` is no value.
fn json_text(value: &Value) -> Option<String> {
    match value {
        Value::Null => None,
        Value::String(text) => Some(text.clone()),
        other => Some(other.to_string()),
    }
}

/// An integer sent as a JSON number or as a string of digits.
fn integer(value: &Value) -> Option<i64> {
    match value {
        Value::Number(number) => number.as_i64(),
        Value::String(text) => text.trim().parse().ok(),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apis::hawkeye::LastUpdate;

    fn update(text: Option<&str>) -> Option<LastUpdate> {
        Some(LastUpdate {
            last_update: text.map(str::to_string),
        })
    }

    fn probe(nodetonode: Option<LastUpdate>, realservice: Option<LastUpdate>) -> Probe {
        Probe {
            probe_id: json!("27"),
            uid: json!("b8:27:eb:76:a8:de"),
            probe_group: json!("FIS"),
            type_name: json!("xr_pi"),
            serial_number: "B827EB76A8DE".into(),
            nodetonode,
            realservice,
        }
    }

    fn document(status: &str, serial: &str, client_id: Value) -> InventoryDocument {
        InventoryDocument {
            client_id,
            client_name: json!("METTEL/NEW YORK"),
            site_id: json!(2048),
            status: Some(status.into()),
            service_number: Some(serial.into()),
        }
    }

    #[test]
    fn a_probe_never_contacted_on_both_sides_has_no_last_contact() {
        assert_eq!(
            last_contact(&probe(update(Some("never")), update(Some("never")))),
            None
        );
        assert_eq!(last_contact(&probe(None, update(None))), None);
        assert_eq!(last_contact(&probe(update(Some("never")), None)), None);
    }

    #[test]
    fn the_later_update_wins_and_keeps_the_text_the_api_sent() {
        let contact = last_contact(&probe(
            update(Some("2020-11-05T13:57:07Z")),
            update(Some("2020-11-05T15:00:00+02:00")),
        ))
        .unwrap();
        // 15:00+02:00 is 13:00Z: earlier than node-to-node.
        assert_eq!(contact.text, "2020-11-05T13:57:07Z");
        let contact = last_contact(&probe(
            update(Some("2020-11-05T13:57:07Z")),
            update(Some("2020-11-06T00:00:00.123Z")),
        ))
        .unwrap();
        assert_eq!(contact.text, "2020-11-06T00:00:00.123Z");
    }

    #[test]
    fn never_on_one_side_is_ignored() {
        let contact = last_contact(&probe(
            update(Some("never")),
            update(Some("2021-01-01T00:00:00Z")),
        ))
        .unwrap();
        assert_eq!(contact.text, "2021-01-01T00:00:00Z");
        assert_eq!(contact.at.timestamp(), 1_609_459_200);
    }

    #[test]
    fn unreadable_updates_count_as_never() {
        assert_eq!(last_contact(&probe(update(Some("yesterday")), None)), None);
    }

    #[test]
    fn only_active_documents_of_the_exact_serial_count() {
        let docs = vec![
            document("D", "ABC", json!(1)),
            document("A", "abc", json!(2)),
            document("A", "ABC ", json!(3)),
            document("A", "ABC", json!(4)),
            document("A", "ABC", json!(5)),
        ];
        let kept: Vec<&Value> = active_documents("ABC", &docs)
            .into_iter()
            .map(|doc| &doc.client_id)
            .collect();
        assert_eq!(kept, [&json!(4), &json!(5)]);
        assert!(active_documents("XYZ", &docs).is_empty());
    }

    #[test]
    fn monitorable_statuses_match_exactly_with_the_en_dash() {
        let allowed = vec![
            "Pending".to_string(),
            "Active \u{2013} Gold Monitoring".to_string(),
        ];
        assert!(is_monitorable("Active \u{2013} Gold Monitoring", &allowed));
        assert!(is_monitorable("Pending", &allowed));
        assert!(!is_monitorable("Active - Gold Monitoring", &allowed));
        assert!(!is_monitorable("pending", &allowed));
        assert!(!is_monitorable("", &allowed));
    }

    fn kept(client_id: Value) -> KeptDevice {
        let probe = probe(update(Some("2020-11-05T13:57:07Z")), update(Some("never")));
        KeptDevice {
            last_contact: last_contact(&probe).unwrap(),
            client: ClientInfo::from(&document("A", "B827EB76A8DE", client_id)),
            management_status: "Active \u{2013} Gold Monitoring".into(),
            probe,
        }
    }

    #[test]
    fn the_cache_entry_has_the_contract_keys_and_the_api_types() {
        let entry = kept(json!(9994)).cache_entry();
        assert_eq!(
            entry,
            json!({"probe_id": "27", "probe_uid": "b8:27:eb:76:a8:de", "probe_group": "FIS",
                   "device_type_name": "xr_pi", "last_contact": "2020-11-05T13:57:07Z",
                   "serial_number": "B827EB76A8DE",
                   "bruin_client_info": {"client_id": 9994, "client_name": "METTEL/NEW YORK",
                                         "site_id": 2048}})
        );
    }

    #[test]
    fn the_profile_update_carries_the_hawkeye_fields_as_text() {
        let mut device = kept(json!("9994"));
        device.probe.probe_id = json!(27);
        device.probe.probe_group = Value::Null;
        let update = device.profile_update(1_700_000_000_000);
        assert_eq!(update.device_id, "B827EB76A8DE");
        assert_eq!(update.version, 1_700_000_000_000);
        assert_eq!(update.text[&TextField::ProbeId], "27");
        assert_eq!(update.text[&TextField::ProbeUid], "b8:27:eb:76:a8:de");
        assert_eq!(update.text[&TextField::ClientName], "METTEL/NEW YORK");
        assert_eq!(
            update.text[&TextField::ManagementStatus],
            "Active \u{2013} Gold Monitoring"
        );
        assert!(!update.text.contains_key(&TextField::ProbeGroup));
        assert_eq!(update.client_id, Some(9994));
        assert_eq!(update.site_id, Some(2048));
        assert_eq!(update.last_contact.unwrap().text, "2020-11-05T13:57:07Z");
    }
}
