//! Device profile writes into Redis: the upsert and delete scripts, one pipeline per batch.

use std::collections::HashMap;

use chrono::DateTime;
use redis::cluster_routing::Slot;
use redis::{ErrorKind, RedisResult, Script, ServerErrorKind};

use super::RedisStore;
use crate::profile::fields::{map_text, FieldValue, MergeRule, ValueType, FIELDS};
use crate::profile::{LastContact, ProfileUpdate};
use crate::stores::StoreError;

/// Writes device profiles into Redis with the upsert and delete scripts, loaded once and
/// invoked by their SHA in one pipeline per batch.
#[derive(Clone)]
pub struct ProfileWriter {
    store: RedisStore,
    upsert_script: Script,
    delete_script: Script,
}

/// The orders both scripts use, loaded in front of each.
const ORDER_LUA: &str = include_str!("profile_order.lua");

/// Devices per call of the upsert script: the call's own cost (4–5 µs of the 17–37 µs a call of
/// one device took, docs/benchmarks-history.md) is shared, while a call stays short enough not
/// to hold up the server's other clients (about a millisecond).
const DEVICES_PER_CALL: usize = 32;

impl ProfileWriter {
    /// Loads the scripts on the server so that pipelines can call them by SHA.
    pub async fn load(store: RedisStore) -> Result<Self, StoreError> {
        let writer = ProfileWriter {
            store,
            upsert_script: Script::new(&[ORDER_LUA, include_str!("profile_upsert.lua")].concat()),
            delete_script: Script::new(&[ORDER_LUA, include_str!("profile_delete.lua")].concat()),
        };
        writer.load_scripts().await?;
        Ok(writer)
    }

    async fn load_scripts(&self) -> Result<(), StoreError> {
        let mut connection = self.store.connection();
        for script in [&self.upsert_script, &self.delete_script] {
            script.prepare_invoke().load_async(&mut connection).await?;
        }
        Ok(())
    }

    /// Upserts every update (one script call each, pipelined) and returns, per update in
    /// order, the device's `last_contact` as stored afterwards, or why Redis refused it for
    /// good (a key that is not a hash: the script fails and leaves it alone). A transient
    /// failure of any call fails the whole call, to be retried.
    pub async fn upsert(
        &self,
        updates: &[ProfileUpdate],
    ) -> Result<Vec<Result<Option<LastContact>, StoreError>>, StoreError> {
        if updates.is_empty() {
            return Ok(Vec::new());
        }
        let mut answers = self.run_pipelines(updates).await?;
        // A restarted or flushed server forgot the scripts: load them again and repeat.
        if answers
            .iter()
            .any(|answer| answer.as_ref().is_err_and(is_no_script))
        {
            self.load_scripts().await?;
            answers = self.run_pipelines(updates).await?;
        }
        let mut outcomes = Vec::with_capacity(answers.len());
        for answer in answers {
            match answer.map_err(StoreError::from) {
                Ok(stored) => outcomes.push(Ok(stored_last_contact(stored))),
                Err(error) if error.is_transient() => return Err(error),
                Err(refused) => outcomes.push(Err(refused)),
            }
        }
        Ok(outcomes)
    }

    /// Each device's `last_contact` as stored now, in order; `None` for a device without one.
    pub async fn last_contacts(
        &self,
        device_ids: &[&str],
    ) -> Result<Vec<Option<LastContact>>, StoreError> {
        let mut pipeline = redis::pipe();
        for device_id in device_ids {
            pipeline
                .hget(self.store.device_key(device_id), "last_contact")
                .hget(self.store.device_versions_key(device_id), "last_contact");
        }
        let answers: Vec<Option<String>> = self.store.connection().query_all(pipeline).await?;
        Ok(answers
            .chunks(2)
            .map(|pair| match pair {
                [Some(text), Some(micros)] => {
                    stored_last_contact(vec![text.clone(), micros.clone()])
                }
                _ => None,
            })
            .collect())
    }

    /// One answer per update, in order: the deletes in a pipeline of their own first (on a
    /// cluster the calls of one pipeline run at once, and a device's delete must come before
    /// its newer updates of the same batch), then the upserts, several devices per call.
    async fn run_pipelines(
        &self,
        updates: &[ProfileUpdate],
    ) -> RedisResult<Vec<RedisResult<Vec<String>>>> {
        let (deletes, upserts): (Vec<usize>, Vec<usize>) =
            (0..updates.len()).partition(|&index| updates[index].delete);
        let mut answers = Vec::with_capacity(updates.len());
        if !deletes.is_empty() {
            let got = self
                .run_deletes(deletes.iter().map(|&index| &updates[index]))
                .await?;
            answers.extend(deletes.into_iter().zip(got));
        }
        if !upserts.is_empty() {
            answers.extend(
                self.run_upserts(updates, self.upsert_calls(updates, upserts))
                    .await?,
            );
        }
        answers.sort_by_key(|(index, _)| *index);
        Ok(answers.into_iter().map(|(_, answer)| answer).collect())
    }

    /// One answer per delete: a failing call fails only its own answer.
    async fn run_deletes(
        &self,
        deletes: impl Iterator<Item = &ProfileUpdate>,
    ) -> RedisResult<Vec<RedisResult<Vec<String>>>> {
        let mut pipeline = redis::pipe();
        for delete in deletes {
            let mut invocation = self.delete_script.prepare_invoke();
            invocation
                .key(self.store.device_key(&delete.device_id))
                .key(self.store.device_versions_key(&delete.device_id))
                .arg(delete_arguments(delete));
            pipeline.invoke_script(&invocation);
        }
        self.store.connection().query_each(pipeline).await
    }

    /// The upserts (indexes into `updates`) grouped into script calls: on a cluster, the
    /// devices of one hash slot (a script may touch no other); on one server, any.
    fn upsert_calls(&self, updates: &[ProfileUpdate], upserts: Vec<usize>) -> Vec<Vec<usize>> {
        let cluster = self.store.connection().is_cluster();
        let mut by_slot: HashMap<Option<Slot>, Vec<usize>> = HashMap::new();
        for index in upserts {
            let slot =
                cluster.then(|| Slot::for_key(self.store.device_key(&updates[index].device_id)));
            by_slot.entry(slot).or_default().push(index);
        }
        by_slot
            .into_values()
            .flat_map(|devices| {
                devices
                    .chunks(DEVICES_PER_CALL)
                    .map(<[usize]>::to_vec)
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    /// One answer per device of `calls`, with its index. A call of several devices that fails
    /// (a device whose key is not a hash stops it) is made again device by device, so that the
    /// failure is only the refused device's; the writes are idempotent.
    async fn run_upserts(
        &self,
        updates: &[ProfileUpdate],
        calls: Vec<Vec<usize>>,
    ) -> RedisResult<Vec<(usize, RedisResult<Vec<String>>)>> {
        let mut answers = Vec::new();
        let mut again = Vec::new();
        let got = self.run_upsert_calls(updates, &calls).await?;
        for (call, answer) in calls.into_iter().zip(got) {
            let stopped = call.len() > 1
                && answer.as_ref().map_or_else(
                    |error| !is_no_script(error),
                    |per_device| per_device.len() != call.len(),
                );
            if stopped {
                again.extend(call.into_iter().map(|index| vec![index]));
            } else {
                answers.extend(per_device(call, answer));
            }
        }
        if !again.is_empty() {
            let got = self.run_upsert_calls(updates, &again).await?;
            for (call, answer) in again.into_iter().zip(got) {
                answers.extend(per_device(call, answer));
            }
        }
        Ok(answers)
    }

    /// One answer per call: the answer of each of its devices, or the call's failure.
    async fn run_upsert_calls(
        &self,
        updates: &[ProfileUpdate],
        calls: &[Vec<usize>],
    ) -> RedisResult<Vec<RedisResult<Vec<Vec<String>>>>> {
        let mut pipeline = redis::pipe();
        for call in calls {
            let mut invocation = self.upsert_script.prepare_invoke();
            for &index in call {
                let update = &updates[index];
                invocation
                    .key(self.store.device_key(&update.device_id))
                    .key(self.store.device_versions_key(&update.device_id))
                    .arg(script_arguments(update));
            }
            pipeline.invoke_script(&invocation);
        }
        self.store.connection().query_each(pipeline).await
    }
}

fn is_no_script(error: &redis::RedisError) -> bool {
    error.kind() == ErrorKind::Server(ServerErrorKind::NoScript)
}

/// Each device's answer of one upsert call, with its index: its own entry, or the call's
/// failure (an answer without one entry per device is one).
fn per_device(
    call: Vec<usize>,
    answer: RedisResult<Vec<Vec<String>>>,
) -> Vec<(usize, RedisResult<Vec<String>>)> {
    match answer {
        Ok(entries) if entries.len() == call.len() => {
            call.into_iter().zip(entries.into_iter().map(Ok)).collect()
        }
        Ok(_) => {
            let unexpected: redis::RedisError = (
                ErrorKind::UnexpectedReturnType,
                "the upsert script answered for another number of devices",
            )
                .into();
            call.into_iter()
                .map(|index| (index, Err(unexpected.clone())))
                .collect()
        }
        Err(error) => call
            .into_iter()
            .map(|index| (index, Err(error.clone())))
            .collect(),
    }
}

/// How the script resolves one field (see `profile_upsert.lua`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ScriptRule {
    Text,
    Int,
    Min,
    LastContact,
}

impl ScriptRule {
    fn of(rule: MergeRule, value_type: ValueType) -> Self {
        match (rule, value_type) {
            (
                MergeRule::NewestVersion | MergeRule::UpdateVersion,
                ValueType::BigInt | ValueType::Timestamp,
            ) => ScriptRule::Int,
            (
                MergeRule::NewestVersion | MergeRule::UpdateVersion,
                ValueType::Text | ValueType::TextMap,
            ) => ScriptRule::Text,
            (MergeRule::Smallest | MergeRule::EarliestDeclaration, _) => ScriptRule::Min,
            (MergeRule::LatestInstant, _) => ScriptRule::LastContact,
        }
    }

    fn name(self) -> &'static str {
        match self {
            ScriptRule::Text => "text",
            ScriptRule::Int => "int",
            ScriptRule::Min => "min",
            ScriptRule::LastContact => "lc",
        }
    }
}

/// The delete script's ARGV: the version, then the fields it removes whatever their version
/// (those ordered by their value, whose Cassandra columns the delete removes whole).
fn delete_arguments(delete: &ProfileUpdate) -> Vec<String> {
    let value_ordered = FIELDS.iter().filter(|spec| spec.rule.is_value_ordered());
    std::iter::once(delete.version.to_string())
        .chain(value_ordered.filter_map(|spec| spec.redis.map(str::to_string)))
        .collect()
}

/// The script's ARGV for one update: the number of its fields, its version, its last contact
/// micros, then (rule, field, value) per field.
fn script_arguments(update: &ProfileUpdate) -> Vec<String> {
    let contact_micros = update
        .last_contact
        .as_ref()
        .map(|contact| contact.at.timestamp_micros().to_string())
        .unwrap_or_default();
    let fields = hash_fields(update);
    let mut arguments = vec![
        fields.len().to_string(),
        update.version.to_string(),
        contact_micros,
    ];
    for (rule, field, value) in fields {
        arguments.extend([rule.name().to_string(), field.to_string(), value]);
    }
    arguments
}

/// The hash fields an update carries, named as readers expect (`CONTRACT.md` §3).
fn hash_fields(update: &ProfileUpdate) -> Vec<(ScriptRule, &'static str, String)> {
    FIELDS
        .iter()
        .filter_map(|spec| {
            let name = spec.redis?;
            let value = update.value(spec.field)?;
            Some((
                ScriptRule::of(spec.rule, spec.value_type),
                name,
                hash_value(value),
            ))
        })
        .collect()
}

/// A value as the hash stores it: numbers in decimal, maps as their JSON text.
pub fn hash_value(value: FieldValue<'_>) -> String {
    match value {
        FieldValue::Text(text) => text.into_owned(),
        FieldValue::BigInt(number) | FieldValue::Timestamp(number) => number.to_string(),
        FieldValue::TextMap(map) => map_text(&map),
        FieldValue::LastContact(contact) => contact.text.clone(),
    }
}

/// The script's answer: `[text, micros]` when the device has a last contact.
fn stored_last_contact(answer: Vec<String>) -> Option<LastContact> {
    let [text, micros] = <[String; 2]>::try_from(answer).ok()?;
    let at = DateTime::from_timestamp_micros(micros.parse().ok()?)?;
    Some(LastContact { at, text })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::profile::TextField;

    #[test]
    fn script_arguments_carry_the_version_and_a_rule_per_field() {
        let update = ProfileUpdate {
            device_id: "d".into(),
            version: 42,
            text: [
                (TextField::State, "Karnataka's".to_string()),
                (TextField::UserDeclaredState, "KA".to_string()),
            ]
            .into(),
            site_id: Some(2048),
            device_spec: Some([("os".to_string(), "Android".to_string())].into()),
            first_access: Some(7),
            last_contact: Some(LastContact {
                at: DateTime::from_timestamp_micros(1_000_001).unwrap(),
                text: "1970-01-01T00:00:01.000001Z".into(),
            }),
            ..ProfileUpdate::default()
        };
        let expected: Vec<String> = [
            "7",
            "42",
            "1000001",
            "text",
            "state",
            "Karnataka's",
            "text",
            "user_declared_state",
            "KA",
            "int",
            "site_id",
            "2048",
            "text",
            "devicespec",
            r#"{"os":"Android"}"#,
            "min",
            "firstaccess",
            "7",
            "min",
            "user_declared_on",
            "42",
            "lc",
            "last_contact",
            "1970-01-01T00:00:01.000001Z",
        ]
        .map(String::from)
        .into();
        assert_eq!(script_arguments(&update), expected);
    }

    #[test]
    fn the_script_answer_becomes_the_stored_last_contact() {
        let answer = vec![
            "2020-11-05T13:57:07Z".to_string(),
            "1604584627000000".to_string(),
        ];
        let contact = stored_last_contact(answer).unwrap();
        assert_eq!(contact.text, "2020-11-05T13:57:07Z");
        assert_eq!(contact.at.timestamp(), 1_604_584_627);
        assert_eq!(stored_last_contact(Vec::new()), None);
    }
}
