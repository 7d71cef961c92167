//! One device's changes, as both stores receive them. Built from a Kafka event (`CONTRACT.md`
//! §3) or from a kept device of a refresh (§4). Absent fields (`None`, missing from `text`)
//! leave the stored values as they are.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};

/// The string columns of `device_profile`; each is a Redis hash field of the same name.
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
    pub const ALL: [TextField; 19] = [
        TextField::CountryCode,
        TextField::Country,
        TextField::StateCode,
        TextField::State,
        TextField::City,
        TextField::DistrictCustom,
        TextField::StateCustom,
        TextField::StateCodeCustom,
        TextField::UserDeclaredState,
        TextField::UserDeclaredDistrict,
        TextField::FcmToken,
        TextField::ProducerId,
        TextField::SerialNumber,
        TextField::ProbeId,
        TextField::ProbeUid,
        TextField::ProbeGroup,
        TextField::DeviceTypeName,
        TextField::ClientName,
        TextField::ManagementStatus,
    ];

    /// The JSON field of the event, the Cassandra column and the Redis hash field.
    pub fn name(self) -> &'static str {
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
}

impl ProfileUpdate {
    /// `user_declared_on` is the version of the earliest update that declared a state.
    pub fn user_declared_on(&self) -> Option<i64> {
        self.text
            .contains_key(&TextField::UserDeclaredState)
            .then_some(self.version)
    }
}
