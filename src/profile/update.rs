//! One device's changes, as both stores receive them. Built from a Kafka event (`CONTRACT.md`
//! §3) or from a kept device of a refresh (§4). Absent fields (`None`, missing from `text`)
//! leave the stored values as they are.

use std::borrow::Cow;
use std::collections::BTreeMap;

use chrono::{DateTime, Utc};

use super::fields::{Field, FieldValue};

/// The string columns of `device_profile` (rows of [`FIELDS`](super::fields::FIELDS)); each is
/// a Redis hash field of the same name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum TextField {
    CountryCode,
    Country,
    StateCode,
    State,
    City,
    DistrictCustom,
    StateCustom,
    StateCodeCustom,
    UserDeclaredState,
    UserDeclaredDistrict,
    FcmToken,
    ProducerId,
    SerialNumber,
    ProbeId,
    ProbeUid,
    ProbeGroup,
    DeviceTypeName,
    ClientName,
    ManagementStatus,
}

impl TextField {
    /// The JSON field of the event, the Cassandra column and the Redis hash field.
    pub const fn name(self) -> &'static str {
        match self {
            TextField::CountryCode => "country_code",
            TextField::Country => "country",
            TextField::StateCode => "state_code",
            TextField::State => "state",
            TextField::City => "city",
            TextField::DistrictCustom => "district_custom",
            TextField::StateCustom => "state_custom",
            TextField::StateCodeCustom => "state_code_custom",
            TextField::UserDeclaredState => "user_declared_state",
            TextField::UserDeclaredDistrict => "user_declared_district",
            TextField::FcmToken => "fcm_token",
            TextField::ProducerId => "producer_id",
            TextField::SerialNumber => "serial_number",
            TextField::ProbeId => "probe_id",
            TextField::ProbeUid => "probe_uid",
            TextField::ProbeGroup => "probe_group",
            TextField::DeviceTypeName => "device_type_name",
            TextField::ClientName => "client_name",
            TextField::ManagementStatus => "management_status",
        }
    }
}

/// A last contact time: the instant orders updates (the latest wins), the text is stored as
/// the source sent it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LastContact {
    pub at: DateTime<Utc>,
    pub text: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ProfileUpdate {
    pub device_id: String,
    /// Epoch milliseconds ordering this update against others of the same device:
    /// `api_last_updated_on`, else the Kafka record timestamp, else the refresh's start.
    pub version: i64,
    pub text: BTreeMap<TextField, String>,
    pub client_id: Option<i64>,
    pub site_id: Option<i64>,
    pub uaspec: Option<BTreeMap<String, String>>,
    pub device_spec: Option<BTreeMap<String, String>>,
    /// Epoch ms; the earliest ever seen is kept.
    pub first_access: Option<i64>,
    /// Epoch ms.
    pub api_last_updated_on: Option<i64>,
    /// The latest ever seen is kept.
    pub last_contact: Option<LastContact>,
    /// The update carries a `user_declared_state` copied from a store that holds no
    /// `user_declared_on` for it (another writer's row): it declares no date.
    pub undated_declaration: bool,
    /// A delete (a Kafka tombstone): the device's fields of versions up to `version` are
    /// removed from both stores; it carries no field.
    pub delete: bool,
}

impl ProfileUpdate {
    /// The delete of `device_id` at `version` (CONTRACT.md §3, "Deletes").
    pub fn delete(device_id: String, version: i64) -> Self {
        ProfileUpdate {
            device_id,
            version,
            delete: true,
            ..ProfileUpdate::default()
        }
    }

    /// `user_declared_on` is the version of the earliest update that declared a state.
    pub fn user_declared_on(&self) -> Option<i64> {
        (self.text.contains_key(&TextField::UserDeclaredState) && !self.undated_declaration)
            .then_some(self.version)
    }

    /// The value of `field` this update writes; `None` when it leaves the field as stored.
    pub fn value(&self, field: Field) -> Option<FieldValue<'_>> {
        match field {
            Field::Text(field) => self
                .text
                .get(&field)
                .map(|text| FieldValue::Text(Cow::Borrowed(text))),
            Field::ClientId => self.client_id.map(FieldValue::BigInt),
            Field::SiteId => self.site_id.map(FieldValue::BigInt),
            Field::ApiLastUpdatedOn => self.api_last_updated_on.map(FieldValue::Timestamp),
            Field::Uaspec => borrowed_map(&self.uaspec),
            Field::DeviceSpec => borrowed_map(&self.device_spec),
            Field::FirstAccess => self.first_access.map(FieldValue::Timestamp),
            Field::UserDeclaredOn => self.user_declared_on().map(FieldValue::Timestamp),
            Field::LastContact => self
                .last_contact
                .as_ref()
                .map(|contact| FieldValue::LastContact(Cow::Borrowed(contact))),
            // The time of the change as its source ordered it, so a replay writes the same value.
            Field::UpdatedDate => Some(FieldValue::Timestamp(self.version)),
        }
    }

    /// Sets `field` to `value`, or clears it with `None` (or a value of another type). Derived
    /// fields follow the fields they are computed from and are left alone.
    pub fn set(&mut self, field: Field, value: Option<FieldValue<'_>>) {
        match field {
            Field::Text(field) => match value.and_then(FieldValue::into_text) {
                Some(text) => {
                    self.text.insert(field, text);
                }
                None => {
                    self.text.remove(&field);
                }
            },
            Field::ClientId => self.client_id = value.and_then(FieldValue::into_number),
            Field::SiteId => self.site_id = value.and_then(FieldValue::into_number),
            Field::ApiLastUpdatedOn => {
                self.api_last_updated_on = value.and_then(FieldValue::into_number)
            }
            Field::Uaspec => self.uaspec = value.and_then(FieldValue::into_text_map),
            Field::DeviceSpec => self.device_spec = value.and_then(FieldValue::into_text_map),
            Field::FirstAccess => self.first_access = value.and_then(FieldValue::into_number),
            Field::LastContact => self.last_contact = value.and_then(FieldValue::into_last_contact),
            Field::UserDeclaredOn | Field::UpdatedDate => {}
        }
    }
}

fn borrowed_map(map: &Option<BTreeMap<String, String>>) -> Option<FieldValue<'_>> {
    map.as_ref()
        .map(|map| FieldValue::TextMap(Cow::Borrowed(map)))
}
