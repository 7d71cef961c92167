//! `profile verify [--repair]`: every device compared field by field in both stores (the
//! Redis hash fields against the Cassandra columns of [`FIELDS`]), and with `--repair` each
//! differing device written from each store into the other through the ordinary upserts, so
//! that the rules decide which side wins, field by field, as they decide between events.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::AtomicU64;
use std::sync::Mutex;

use chrono::DateTime;

use super::rebuild::PROGRESS_EVERY;
use crate::config::StoreSettings;
use crate::profile::fields::{FieldValue, FIELDS};
use crate::stores::cassandra::scan::{with_progress, ProfileScan};
use crate::stores::redis::{hash_value, ProfileWriter};
use crate::stores::stored_profile::StoredProfile;
use crate::stores::{cassandra, CassandraStore, RedisStore, StoreError};
use crate::sync;

/// Differences kept to be shown.
pub const DIFFERENCES_SHOWN: usize = 10;
/// Devices read or repaired per Redis round trip outside the scan.
const DEVICES_PER_BATCH: usize = 200;
/// Keys asked for per `SCAN` call.
const SCAN_COUNT: usize = 1000;

/// One field on which the stores disagree, each side as Redis would hold it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Difference {
    pub device_id: String,
    pub field: &'static str,
    pub redis: Option<String>,
    pub cassandra: Option<String>,
}

/// What a verification found.
#[derive(Debug, Default)]
pub struct Verified {
    pub devices_checked: u64,
    /// Every device that differs.
    pub differing: Vec<String>,
    /// The first [`DIFFERENCES_SHOWN`] differences.
    pub shown: Vec<Difference>,
    /// With `--repair`: the differing devices that still differ after it.
    pub still_differing: Option<Vec<String>>,
    /// Devices whose row holds a cell in the first timestamp encoding (see
    /// [`StoredProfile::legacy_timestamps`]); `--repair` cannot rewrite those.
    pub legacy_timestamps: Vec<String>,
}

impl Verified {
    fn record(&mut self, device_id: &str, differences: Vec<Difference>) {
        self.devices_checked += 1;
        if differences.is_empty() {
            return;
        }
        self.differing.push(device_id.to_string());
        let room = DIFFERENCES_SHOWN.saturating_sub(self.shown.len());
        self.shown.extend(differences.into_iter().take(room));
    }
}

/// The fields on which `redis` (a device's hash) and `cassandra` (its row, if any) differ.
/// `last_contact` is compared by instant, to the millisecond: Cassandra keeps no text.
pub fn differences(
    device_id: &str,
    cassandra: Option<&StoredProfile>,
    redis: &HashMap<String, String>,
) -> Vec<Difference> {
    let mut found = Vec::new();
    for spec in FIELDS {
        let Some(name) = spec.redis else { continue };
        let in_redis = redis.get(name);
        let in_cassandra = cassandra
            .and_then(|profile| profile.fields.get(&spec.field))
            .map(|stored| &stored.value);
        let agree = match (in_redis, in_cassandra) {
            (None, None) => true,
            (Some(text), Some(FieldValue::LastContact(contact))) => {
                DateTime::parse_from_rfc3339(text)
                    .is_ok_and(|at| at.timestamp_millis() == contact.at.timestamp_millis())
            }
            (Some(text), Some(value)) => hash_value(value.clone()) == *text,
            _ => false,
        };
        if !agree {
            found.push(Difference {
                device_id: device_id.to_string(),
                field: name,
                redis: in_redis.cloned(),
                cassandra: in_cassandra.map(|value| hash_value(value.clone())),
            });
        }
    }
    found
}

/// The stores and writers a verification uses.
struct Stores {
    redis: RedisStore,
    redis_writer: ProfileWriter,
    cassandra_writer: cassandra::ProfileWriter,
    scan: ProfileScan,
}

/// Connects to both stores, compares every device (progress on stderr) and, with `repair`,
/// repairs the devices that differ.
pub async fn verify(settings: &StoreSettings, repair: bool) -> Result<Verified, StoreError> {
    let redis = RedisStore::connect(settings).await?;
    let cassandra = CassandraStore::open(settings).await?;
    let stores = Stores {
        redis_writer: ProfileWriter::load(redis.clone()).await?,
        cassandra_writer: cassandra::ProfileWriter::prepare(&cassandra).await?,
        scan: ProfileScan::prepare(&cassandra).await?,
        redis,
    };
    let scanned = AtomicU64::new(0);
    let mut verified = with_progress(
        "verify",
        &scanned,
        PROGRESS_EVERY,
        stores.compare_all(&scanned),
    )
    .await?;
    if repair {
        stores.repair(&verified.differing).await?;
        let mut rechecked = Verified::default();
        stores
            .compare_devices(&verified.differing, &mut rechecked)
            .await?;
        verified.still_differing = Some(rechecked.differing);
    }
    Ok(verified)
}

impl Stores {
    /// Every row of Cassandra against its hash, then the hashes of devices Cassandra has no
    /// row for (read again by device, so a device the service created meanwhile is compared
    /// as it now is).
    async fn compare_all(&self, scanned: &AtomicU64) -> Result<Verified, StoreError> {
        let findings = Mutex::new((Verified::default(), HashSet::new()));
        let findings_so_far = &findings;
        self.scan
            .for_each_page(scanned, |page| async move {
                let device_ids: Vec<&str> = page.iter().map(|p| p.device_id.as_str()).collect();
                let hashes = self.hashes(&device_ids).await?;
                let mut guard = sync::lock(findings_so_far);
                let (verified, seen) = &mut *guard;
                for (profile, (hash, _)) in page.iter().zip(hashes) {
                    if profile.legacy_timestamps {
                        verified.legacy_timestamps.push(profile.device_id.clone());
                    }
                    verified.record(
                        &profile.device_id,
                        differences(&profile.device_id, Some(profile), &hash),
                    );
                    seen.insert(profile.device_id.clone());
                }
                Ok(())
            })
            .await?;
        let (mut verified, seen) = sync::into_inner(findings);
        let only_in_redis: Vec<String> = self
            .redis_device_ids()
            .await?
            .into_iter()
            .filter(|device_id| !seen.contains(device_id))
            .collect();
        self.compare_devices(&only_in_redis, &mut verified).await?;
        Ok(verified)
    }

    /// Compares the given devices, each read from both stores now.
    async fn compare_devices(
        &self,
        device_ids: &[String],
        verified: &mut Verified,
    ) -> Result<(), StoreError> {
        for batch in device_ids.chunks(DEVICES_PER_BATCH) {
            for (device_id, row, (hash, _)) in self.read_both(batch).await? {
                verified.record(device_id, differences(device_id, row.as_ref(), &hash));
            }
        }
        Ok(())
    }

    /// Each device's row, hash and versions hash.
    async fn read_both<'a>(
        &self,
        device_ids: &'a [String],
    ) -> Result<Vec<(&'a str, Option<StoredProfile>, RedisHashes)>, StoreError> {
        let ids: Vec<&str> = device_ids.iter().map(String::as_str).collect();
        let hashes = self.hashes(&ids).await?;
        // The rows in the push's multi-partition reads, a request per group of devices.
        let mut rows = HashMap::new();
        for group in self.cassandra_writer.read_groups(ids.iter().copied()) {
            let read = self.scan.read(&group).await?;
            rows.extend(read.into_iter().map(|row| (row.device_id.clone(), row)));
        }
        Ok(ids
            .into_iter()
            .zip(hashes)
            .map(|(device_id, hashes)| (device_id, rows.remove(device_id), hashes))
            .collect())
    }

    /// Writes each device from each store into the other: Cassandra's row through the Redis
    /// upsert (as `rebuild-redis` does), the Redis hash with its versions through the
    /// Cassandra upsert. Fields Redis holds without a version cannot be ordered and stay out.
    async fn repair(&self, device_ids: &[String]) -> Result<(), StoreError> {
        for batch in device_ids.chunks(DEVICES_PER_BATCH) {
            let mut into_redis = Vec::new();
            let mut into_cassandra = Vec::new();
            for (device_id, row, (hash, versions)) in self.read_both(batch).await? {
                into_redis.extend(row.iter().flat_map(StoredProfile::updates));
                into_cassandra
                    .extend(StoredProfile::from_redis(device_id, &hash, &versions).updates());
            }
            // A refused device stays different; the recheck reports it.
            self.redis_writer.upsert(&into_redis).await?;
            self.cassandra_writer.upsert(&into_cassandra).await?;
        }
        Ok(())
    }

    /// Each device's hash and versions companion hash (empty when missing), in one round trip.
    async fn hashes(&self, device_ids: &[&str]) -> Result<Vec<RedisHashes>, StoreError> {
        // Redis refuses an empty pipeline; a token range may have no rows.
        if device_ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipeline = redis::pipe();
        for device_id in device_ids {
            pipeline
                .hgetall(self.redis.device_key(device_id))
                .hgetall(self.redis.device_versions_key(device_id));
        }
        let answers: Vec<HashMap<String, String>> =
            self.redis.connection().query_all(pipeline).await?;
        let mut answers = answers.into_iter();
        let mut hashes = Vec::with_capacity(device_ids.len());
        while let (Some(hash), Some(versions)) = (answers.next(), answers.next()) {
            hashes.push((hash, versions));
        }
        Ok(hashes)
    }

    /// The device id of every key with the device key prefix (`SCAN`, so Redis serves other
    /// clients meanwhile).
    async fn redis_device_ids(&self) -> Result<Vec<String>, StoreError> {
        let prefix = self.redis.device_key("");
        let pattern = format!("{}*", glob_escape(&prefix));
        let mut connection = self.redis.connection();
        let keys = connection.scan_keys(&pattern, SCAN_COUNT).await?;
        Ok(device_ids_of(&prefix, keys).collect())
    }
}

/// A device's hash and versions companion hash.
type RedisHashes = (HashMap<String, String>, HashMap<String, String>);

/// The device ids of `keys` that are device hashes: with the prefix, and not a versions hash
/// (which a prefix such as `""` also matches).
fn device_ids_of(prefix: &str, keys: Vec<String>) -> impl Iterator<Item = String> + '_ {
    keys.into_iter()
        .filter(|key| !key.starts_with("versions:"))
        .filter_map(move |key| key.strip_prefix(prefix).map(str::to_string))
}

/// `text` as a `SCAN MATCH` pattern matching itself only.
fn glob_escape(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for c in text.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            escaped.push('\\');
        }
        escaped.push(c);
    }
    escaped
}

#[cfg(test)]
mod tests {
    use std::borrow::Cow;

    use super::*;
    use crate::profile::fields::Field;
    use crate::profile::TextField;
    use crate::stores::stored_profile::{last_contact_at, StoredField};
    use std::collections::BTreeMap;

    fn profile() -> StoredProfile {
        let field = |value| StoredField {
            value,
            version: Some(1),
        };
        let contact = last_contact_at(DateTime::from_timestamp(1_604_584_627, 0).unwrap());
        StoredProfile {
            device_id: "d".into(),
            fields: [
                (
                    Field::Text(TextField::City),
                    field(FieldValue::Text(Cow::Borrowed("Pune"))),
                ),
                (Field::SiteId, field(FieldValue::BigInt(12))),
                (
                    Field::Uaspec,
                    field(FieldValue::TextMap(Cow::Owned(
                        [("a".to_string(), "b".to_string())].into(),
                    ))),
                ),
                (Field::FirstAccess, field(FieldValue::Timestamp(5))),
                (
                    Field::LastContact,
                    field(FieldValue::LastContact(Cow::Owned(contact))),
                ),
                (Field::UpdatedDate, field(FieldValue::Timestamp(1))),
            ]
            .into(),
            writetimes: BTreeMap::new(),
            legacy_timestamps: false,
        }
    }

    fn hash(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    const AGREEING: &[(&str, &str)] = &[
        ("city", "Pune"),
        ("site_id", "12"),
        ("uaspec", r#"{"a":"b"}"#),
        ("firstaccess", "5"),
        ("last_contact", "2020-11-05T15:57:07+02:00"),
    ];

    #[test]
    fn values_compare_in_the_format_each_store_writes() {
        assert_eq!(
            differences("d", Some(&profile()), &hash(AGREEING)),
            Vec::new()
        );
    }

    #[test]
    fn a_changed_or_missing_field_is_a_difference() {
        let mut redis = hash(AGREEING);
        redis.insert("city".into(), "Goa".into());
        redis.remove("firstaccess");
        redis.insert("last_contact".into(), "2020-11-05T13:57:08Z".into());
        let found = differences("d", Some(&profile()), &redis);
        let fields: Vec<_> = found
            .iter()
            .map(|d| (d.field, d.redis.as_deref(), d.cassandra.as_deref()))
            .collect();
        assert_eq!(
            fields,
            vec![
                ("city", Some("Goa"), Some("Pune")),
                ("firstaccess", None, Some("5")),
                (
                    "last_contact",
                    Some("2020-11-05T13:57:08Z"),
                    Some("2020-11-05T13:57:07Z")
                ),
            ]
        );
    }

    #[test]
    fn a_device_only_in_redis_differs() {
        let found = differences("d", None, &hash(&[("city", "Pune")]));
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].cassandra, None);
    }

    #[test]
    fn scan_patterns_match_the_prefix_literally() {
        assert_eq!(glob_escape("a*b?[c]\\"), "a\\*b\\?\\[c\\]\\\\");
        let keys = vec![
            "device:1".to_string(),
            "versions:{device:1}".to_string(),
            "other".to_string(),
        ];
        assert_eq!(
            device_ids_of("device:", keys).collect::<Vec<_>>(),
            vec!["1".to_string()]
        );
        let keys = vec!["x".to_string(), "versions:{x}".to_string()];
        assert_eq!(
            device_ids_of("", keys).collect::<Vec<_>>(),
            vec!["x".to_string()]
        );
    }
}
