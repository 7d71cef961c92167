//! A device profile as one store holds it, and the updates that would have produced it: what
//! the operator tools (`profile rebuild-redis`, `profile verify --repair`) write into the other
//! store through its ordinary upsert, so that the merge rules keep holding afterwards.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, SecondsFormat, Utc};

use crate::profile::fields::{Field, FieldValue, MergeRule, ValueType, FIELDS};
use crate::profile::{LastContact, ProfileUpdate, TextField};

/// One field as a store holds it.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredField {
    pub value: FieldValue<'static>,
    /// The version (epoch ms) of the update that wrote it, for the fields the newest version
    /// wins; `None` for the rules ordered by the value itself, and when the store kept none.
    pub version: Option<i64>,
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct StoredProfile {
    pub device_id: String,
    pub fields: BTreeMap<Field, StoredField>,
    /// Cassandra: the write time (micros) of each cell, as `WRITETIME` answers it (a map's
    /// newest element). Redis keeps none.
    pub writetimes: BTreeMap<Field, i64>,
    /// Cassandra holds a smallest-wins cell in the first timestamp encoding (`i64::MAX -
    /// value`, far in the future): no write of today's encoding can replace it, so an earlier
    /// value would be lost. README, "Upgrading stored rows", says how to rewrite them.
    pub legacy_timestamps: bool,
}

/// A `last_contact` rebuilt from its instant: Cassandra keeps no text, so it is the instant
/// in RFC 3339 UTC, with as many fraction digits as it needs (`2020-11-05T13:57:07Z`).
pub fn last_contact_at(at: DateTime<Utc>) -> LastContact {
    LastContact {
        at,
        text: at.to_rfc3339_opts(SecondsFormat::AutoSi, true),
    }
}

impl StoredProfile {
    /// The updates that, upserted into an empty store, give it this profile and the same
    /// per-field versions; upserted into a store that holds other writes, the rules merge
    /// them as they would the original events. One update per distinct version of the fields
    /// the newest version wins; the smallest-wins and latest-instant fields ride on the newest
    /// of them; `user_declared_on` comes from an update at its own version carrying
    /// `user_declared_state` (which loses there to the newer declaration, if any). Fields
    /// without a version cannot be ordered and are left out.
    pub fn updates(&self) -> Vec<ProfileUpdate> {
        let mut by_version: BTreeMap<i64, ProfileUpdate> = BTreeMap::new();
        let mut by_value = Vec::new();
        let mut declared_on = None;
        for spec in FIELDS {
            let Some(stored) = self.fields.get(&spec.field) else {
                continue;
            };
            match (spec.rule, stored.version) {
                (MergeRule::NewestVersion, Some(version)) => {
                    self.update_at(&mut by_version, version)
                        .set(spec.field, Some(stored.value.clone()));
                }
                (MergeRule::Smallest | MergeRule::LatestInstant, _) => {
                    by_value.push((spec.field, stored.value.clone()));
                }
                (MergeRule::EarliestDeclaration, _) => {
                    declared_on = stored.value.clone().into_number();
                }
                // No version to order it by; `updated_date` follows each update's version.
                (MergeRule::NewestVersion, None) | (MergeRule::UpdateVersion, _) => {}
            }
        }
        let declared_state = self.fields.get(&Field::Text(TextField::UserDeclaredState));
        if declared_on.is_none() {
            // Another writer's declaration, without the date this service keeps: none is made
            // up for it.
            for update in by_version.values_mut() {
                update.undated_declaration =
                    update.text.contains_key(&TextField::UserDeclaredState);
            }
        }
        if let (Some(version), Some(state)) = (declared_on, declared_state) {
            let update = self.update_at(&mut by_version, version);
            if !update.text.contains_key(&TextField::UserDeclaredState) {
                update.set(state_field(), Some(state.value.clone()));
            }
        }
        if !by_value.is_empty() {
            let newest = match by_version.last_entry() {
                Some(entry) => entry.into_mut(),
                None => self.update_at(&mut by_version, 0),
            };
            for (field, value) in by_value {
                newest.set(field, Some(value));
            }
        }
        by_version.into_values().collect()
    }

    fn update_at<'a>(
        &self,
        by_version: &'a mut BTreeMap<i64, ProfileUpdate>,
        version: i64,
    ) -> &'a mut ProfileUpdate {
        by_version.entry(version).or_insert_with(|| ProfileUpdate {
            device_id: self.device_id.clone(),
            version,
            ..ProfileUpdate::default()
        })
    }

    /// The profile a device's Redis hash and its versions companion hash hold. Values that do
    /// not read as their field's type are left out (`verify` reports them as they are).
    pub fn from_redis(
        device_id: &str,
        hash: &HashMap<String, String>,
        versions: &HashMap<String, String>,
    ) -> Self {
        let mut fields = BTreeMap::new();
        for spec in FIELDS {
            let Some(name) = spec.redis else { continue };
            let Some(text) = hash.get(name) else { continue };
            let order = versions
                .get(name)
                .and_then(|order| order.parse::<i64>().ok());
            let Some(value) = redis_value(spec.field, spec.value_type, text, order) else {
                continue;
            };
            let version = match spec.rule {
                MergeRule::NewestVersion | MergeRule::UpdateVersion => order,
                _ => None,
            };
            fields.insert(spec.field, StoredField { value, version });
        }
        StoredProfile {
            device_id: device_id.to_string(),
            fields,
            writetimes: BTreeMap::new(),
            legacy_timestamps: false,
        }
    }
}

fn state_field() -> Field {
    Field::Text(TextField::UserDeclaredState)
}

/// A hash field's text read as its field's type. `last_contact` keeps its text; its instant
/// is the one the script ordered it by (`contact_micros`), else the text's.
fn redis_value(
    field: Field,
    value_type: ValueType,
    text: &str,
    contact_micros: Option<i64>,
) -> Option<FieldValue<'static>> {
    if field == Field::LastContact {
        let at = match contact_micros {
            Some(micros) => DateTime::from_timestamp_micros(micros)?,
            None => DateTime::parse_from_rfc3339(text).ok()?.to_utc(),
        };
        let contact = LastContact {
            at,
            text: text.to_string(),
        };
        return Some(FieldValue::LastContact(Cow::Owned(contact)));
    }
    Some(match value_type {
        ValueType::Text => FieldValue::Text(Cow::Owned(text.to_string())),
        ValueType::BigInt => FieldValue::BigInt(text.parse().ok()?),
        ValueType::Timestamp => FieldValue::Timestamp(text.parse().ok()?),
        ValueType::TextMap => FieldValue::TextMap(Cow::Owned(serde_json::from_str(text).ok()?)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const V1: i64 = 1_650_000_000_000;
    const V2: i64 = 1_650_000_001_000;

    fn text(value: &str) -> FieldValue<'static> {
        FieldValue::Text(Cow::Owned(value.to_string()))
    }

    fn stored(fields: Vec<(Field, FieldValue<'static>, Option<i64>)>) -> StoredProfile {
        StoredProfile {
            device_id: "d".into(),
            fields: fields
                .into_iter()
                .map(|(field, value, version)| (field, StoredField { value, version }))
                .collect(),
            writetimes: BTreeMap::new(),
            legacy_timestamps: false,
        }
    }

    fn contact(seconds: i64) -> LastContact {
        last_contact_at(DateTime::from_timestamp(seconds, 0).unwrap())
    }

    #[test]
    fn a_state_declared_by_another_writer_gets_no_made_up_date() {
        let profile = stored(vec![(
            Field::Text(TextField::UserDeclaredState),
            text("KA"),
            Some(V1),
        )]);
        let updates = profile.updates();
        assert_eq!(updates.len(), 1);
        assert_eq!(updates[0].text[&TextField::UserDeclaredState], "KA");
        assert_eq!(updates[0].user_declared_on(), None);
    }

    #[test]
    fn one_update_per_version_with_the_value_rules_on_the_newest() {
        let profile = stored(vec![
            (Field::Text(TextField::City), text("Pune"), Some(V1)),
            (Field::Text(TextField::State), text("MH"), Some(V2)),
            (Field::ClientId, FieldValue::BigInt(7), Some(V2)),
            (Field::FirstAccess, FieldValue::Timestamp(5), None),
            (
                Field::LastContact,
                FieldValue::LastContact(Cow::Owned(contact(1_604_584_627))),
                None,
            ),
            (Field::UpdatedDate, FieldValue::Timestamp(V2), Some(V2)),
        ]);
        let updates = profile.updates();
        assert_eq!(updates.len(), 2);
        assert_eq!(updates[0].version, V1);
        assert_eq!(updates[0].text[&TextField::City], "Pune");
        assert_eq!(updates[0].first_access, None);
        assert_eq!(updates[1].version, V2);
        assert_eq!(updates[1].text[&TextField::State], "MH");
        assert_eq!(updates[1].client_id, Some(7));
        assert_eq!(updates[1].first_access, Some(5));
        assert_eq!(
            updates[1].last_contact.as_ref().unwrap().text,
            "2020-11-05T13:57:07Z"
        );
    }

    #[test]
    fn the_declaration_date_comes_from_an_update_at_its_own_version() {
        let profile = stored(vec![
            (
                Field::Text(TextField::UserDeclaredState),
                text("KA"),
                Some(V2),
            ),
            (Field::UserDeclaredOn, FieldValue::Timestamp(V1), None),
        ]);
        let updates = profile.updates();
        let on: Vec<_> = updates
            .iter()
            .map(|update| (update.version, update.user_declared_on()))
            .collect();
        assert_eq!(on, vec![(V1, Some(V1)), (V2, Some(V2))]);
        assert!(updates
            .iter()
            .all(|update| update.text[&TextField::UserDeclaredState] == "KA"));
    }

    #[test]
    fn fields_without_a_version_are_left_out() {
        let profile = stored(vec![(Field::Text(TextField::City), text("Pune"), None)]);
        assert_eq!(profile.updates(), Vec::new());
    }

    #[test]
    fn a_redis_hash_reads_back_with_its_versions() {
        let hash: HashMap<String, String> = [
            ("city", "Pune"),
            ("site_id", "12"),
            ("uaspec", r#"{"a":"b"}"#),
            ("firstaccess", "5"),
            ("last_contact", "2020-11-05T15:57:07+02:00"),
            ("client_id", "not a number"),
        ]
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .into();
        let versions: HashMap<String, String> = [
            ("city", V1.to_string()),
            ("site_id", V2.to_string()),
            ("last_contact", "1604584627000000".to_string()),
        ]
        .map(|(k, v)| (k.to_string(), v))
        .into();
        let profile = StoredProfile::from_redis("d", &hash, &versions);
        let field = |field| profile.fields.get(&field).cloned();
        assert_eq!(
            field(Field::Text(TextField::City)).unwrap().version,
            Some(V1)
        );
        assert_eq!(field(Field::SiteId).unwrap().value, FieldValue::BigInt(12));
        assert_eq!(field(Field::Uaspec).unwrap().version, None);
        assert_eq!(
            field(Field::FirstAccess).unwrap().value,
            FieldValue::Timestamp(5)
        );
        let contact = field(Field::LastContact)
            .unwrap()
            .value
            .into_last_contact()
            .unwrap();
        assert_eq!(contact.at.timestamp(), 1_604_584_627);
        assert_eq!(contact.text, "2020-11-05T15:57:07+02:00");
        assert_eq!(field(Field::ClientId), None);
    }
}
