//! Merges the updates of one batch by the stores' own per-field rules (docs/architecture.md),
//! so that writing the result leaves the stores exactly as writing every update would, in any
//! order, with fewer writes.
//!
//! A store keeps one version per field, so fields of different versions cannot share one
//! update: a device yields one update per version that still wins a field (usually one).
//! `first_access` and `last_contact` do not depend on versions and ride on the newest update;
//! the earliest update that declared a state keeps its `user_declared_state`, because
//! `user_declared_on` is its version. A delete removes every update of its device not newer
//! than it, and goes first.

use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet};

use super::fields::{fields_with, smallest_wins_order, Field, FieldValue, MergeRule, FIELDS};
use super::{ProfileUpdate, TextField};

/// The rules that do not depend on versions: their winners ride on the newest update.
const VERSION_FREE_RULES: [MergeRule; 2] = [MergeRule::Smallest, MergeRule::LatestInstant];

/// One update per (device, version) that still carries a winning field, sorted by device and
/// version. The result is the same for every order of `updates`.
pub fn merge(updates: impl IntoIterator<Item = ProfileUpdate>) -> Vec<ProfileUpdate> {
    let mut by_device: BTreeMap<String, Vec<ProfileUpdate>> = BTreeMap::new();
    for update in updates {
        by_device
            .entry(update.device_id.clone())
            .or_default()
            .push(update);
    }
    by_device.into_values().flat_map(merge_device).collect()
}

/// The updates of one device, merged: its newest delete first (when it has one), then what
/// is newer than that delete, merged.
fn merge_device(updates: Vec<ProfileUpdate>) -> Vec<ProfileUpdate> {
    let (deletes, updates): (Vec<_>, Vec<_>) =
        updates.into_iter().partition(|update| update.delete);
    let Some(newest_delete) = deletes.into_iter().max_by_key(|delete| delete.version) else {
        return merge_updates(updates);
    };
    // What is not newer than the delete is removed by it, whatever order they come in.
    let deleted_at = newest_delete.version;
    let newer = updates
        .into_iter()
        .filter(|update| update.version > deleted_at);
    std::iter::once(newest_delete)
        .chain(merge_updates(newer.collect()))
        .collect()
}

/// Updates of one device (no delete), merged.
fn merge_updates(updates: Vec<ProfileUpdate>) -> Vec<ProfileUpdate> {
    let mut by_version: BTreeMap<i64, ProfileUpdate> = BTreeMap::new();
    let mut version_free_winners = ProfileUpdate::default();
    let mut earliest_declaration: Option<(i64, String)> = None;
    for update in updates {
        for rule in VERSION_FREE_RULES {
            keep_winners(&mut version_free_winners, &update, rule);
        }
        if let Some(state) = update.text.get(&TextField::UserDeclaredState) {
            let candidate = (update.version, state.clone());
            earliest_declaration = Some(match earliest_declaration {
                Some(current) if earliest_declared(&current, &candidate) => current,
                _ => candidate,
            });
        }
        match by_version.get_mut(&update.version) {
            // Within one version, the store keeps the greater value of each field (ties of
            // last-write-wins), so the merge does too.
            Some(merged) => keep_winners(merged, &update, MergeRule::NewestVersion),
            None => {
                by_version.insert(update.version, update);
            }
        }
    }
    drop_overridden_fields(&mut by_version);
    if let Some((version, state)) = earliest_declaration {
        if let Some(update) = by_version.get_mut(&version) {
            update.text.insert(TextField::UserDeclaredState, state);
        }
    }
    if let Some((_, newest)) = by_version.iter_mut().next_back() {
        for field in VERSION_FREE_RULES.into_iter().flat_map(fields_with) {
            newest.set(field, version_free_winners.value(field));
        }
    }
    by_version.into_values().filter(carries_anything).collect()
}

/// Copies into `kept` each field of `rule` whose value in `update` the store would keep over
/// the one in `kept`.
fn keep_winners(kept: &mut ProfileUpdate, update: &ProfileUpdate, rule: MergeRule) {
    for field in fields_with(rule) {
        let Some(candidate) = update.value(field) else {
            continue;
        };
        let replaces = kept
            .value(field)
            .is_none_or(|current| beats(rule, &candidate, &current));
        if replaces {
            kept.set(field, Some(candidate));
        }
    }
}

/// Whether a store keeps `candidate` over `current` under `rule`.
fn beats(rule: MergeRule, candidate: &FieldValue<'_>, current: &FieldValue<'_>) -> bool {
    match (rule, candidate, current) {
        (MergeRule::Smallest, FieldValue::Timestamp(candidate), FieldValue::Timestamp(current)) => {
            smallest_wins_order(*candidate, *current) == Ordering::Less
        }
        _ => candidate.cmp_as_stored(current) == Some(wins(rule)),
    }
}

/// How a winning value compares to the one it replaces under `rule`.
fn wins(rule: MergeRule) -> Ordering {
    match rule {
        MergeRule::Smallest | MergeRule::EarliestDeclaration => Ordering::Less,
        MergeRule::NewestVersion | MergeRule::LatestInstant | MergeRule::UpdateVersion => {
            Ordering::Greater
        }
    }
}

/// Removes from older versions every field a newer version overwrites, and from every version
/// the version-free fields (the newest update gets their winners).
fn drop_overridden_fields(by_version: &mut BTreeMap<i64, ProfileUpdate>) {
    let mut set_by_newer: BTreeSet<Field> = BTreeSet::new();
    for update in by_version.values_mut().rev() {
        for field in fields_with(MergeRule::NewestVersion) {
            if update.value(field).is_some() && !set_by_newer.insert(field) {
                update.set(field, None);
            }
        }
        for field in VERSION_FREE_RULES.into_iter().flat_map(fields_with) {
            update.set(field, None);
        }
    }
}

fn carries_anything(update: &ProfileUpdate) -> bool {
    FIELDS
        .iter()
        .any(|spec| !spec.rule.is_derived() && update.value(spec.field).is_some())
}

/// Whether `current` stays the earliest declaration against `candidate`: the version that
/// wins as `user_declared_on` ([`smallest_wins_order`]), on equal versions the greater state
/// (what the store keeps).
fn earliest_declared(current: &(i64, String), candidate: &(i64, String)) -> bool {
    match smallest_wins_order(current.0, candidate.0) {
        Ordering::Less => true,
        Ordering::Greater => false,
        Ordering::Equal => current.1.as_bytes() >= candidate.1.as_bytes(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::profile::LastContact;
    use chrono::DateTime;

    /// A model of one store: per field the value and the order key the rules compare.
    #[derive(Debug, Default, PartialEq, Eq)]
    struct Store {
        fields: BTreeMap<&'static str, (i64, String)>,
    }

    impl Store {
        fn newest(&mut self, field: &'static str, version: i64, value: String) {
            let slot = self
                .fields
                .entry(field)
                .or_insert((i64::MIN, String::new()));
            if (version, value.as_bytes()) > (slot.0, slot.1.as_bytes()) {
                *slot = (version, value);
            }
        }

        fn smallest(&mut self, field: &'static str, value: i64) {
            let kept = self.fields.get(field).map(|slot| slot.0);
            if kept.is_none_or(|kept| smallest_wins_order(value, kept) == Ordering::Less) {
                self.fields.insert(field, (value, value.to_string()));
            }
        }

        fn apply(&mut self, update: &ProfileUpdate) {
            for (field, value) in &update.text {
                self.newest(field.name(), update.version, value.clone());
            }
            let numbers = [
                ("client_id", update.client_id),
                ("site_id", update.site_id),
                ("api_last_updated_on", update.api_last_updated_on),
            ];
            for (field, value) in numbers {
                if let Some(value) = value {
                    // Zero-padded so the text order is the numeric order of these samples.
                    self.newest(field, update.version, format!("{value:020}"));
                }
            }
            for (field, spec) in [
                ("uaspec", &update.uaspec),
                ("devicespec", &update.device_spec),
            ] {
                if let Some(spec) = spec {
                    self.newest(field, update.version, serde_json::to_string(spec).unwrap());
                }
            }
            if let Some(first_access) = update.first_access {
                self.smallest("firstaccess", first_access);
            }
            if let Some(declared_on) = update.user_declared_on() {
                self.smallest("user_declared_on", declared_on);
            }
            if let Some(contact) = &update.last_contact {
                self.newest(
                    "last_contact",
                    contact.at.timestamp_micros(),
                    contact.text.clone(),
                );
            }
        }

        fn after(updates: &[ProfileUpdate]) -> Store {
            let mut store = Store::default();
            updates.iter().for_each(|update| store.apply(update));
            store
        }
    }

    fn event(device: &str, version: i64, fields: &[(TextField, &str)]) -> ProfileUpdate {
        ProfileUpdate {
            device_id: device.to_string(),
            version,
            text: fields.iter().map(|(f, v)| (*f, v.to_string())).collect(),
            ..ProfileUpdate::default()
        }
    }

    fn contact(text: &str) -> Option<LastContact> {
        Some(LastContact {
            at: DateTime::parse_from_rfc3339(text).unwrap().to_utc(),
            text: text.to_string(),
        })
    }

    fn sample() -> Vec<ProfileUpdate> {
        use TextField::*;
        let mut updates = vec![
            event("a", 10, &[(City, "Pune"), (State, "MH")]),
            event("a", 30, &[(City, "Goa")]),
            event(
                "a",
                20,
                &[(City, "Delhi"), (UserDeclaredState, "DL"), (Country, "IN")],
            ),
            event("a", 40, &[(UserDeclaredState, "KA")]),
            event("a", 30, &[(City, "Agra"), (FcmToken, "t1")]),
            event("b", 5, &[(State, "Karnataka's")]),
            event("b", 5, &[(State, "Kerala")]),
            event("c", 7, &[]),
        ];
        updates[0].first_access = Some(1_000);
        updates[1].first_access = Some(900);
        updates[1].last_contact = contact("2020-11-05T13:57:07Z");
        updates[2].last_contact = contact("2021-01-01T00:00:00+01:00");
        updates[2].uaspec = Some([("agent".to_string(), "x".to_string())].into());
        updates[3].api_last_updated_on = Some(40);
        updates[3].client_id = Some(9994);
        updates[4].device_spec = Some([("os".to_string(), "Android".to_string())].into());
        updates[5].site_id = Some(2048);
        updates[7].first_access = Some(77);
        updates
    }

    /// Every rotation and the reverse of `updates`: enough orders to catch order dependence.
    fn orders(updates: &[ProfileUpdate]) -> Vec<Vec<ProfileUpdate>> {
        let mut orders = Vec::new();
        for shift in 0..updates.len() {
            let mut order = updates.to_vec();
            order.rotate_left(shift);
            orders.push(order.clone());
            order.reverse();
            orders.push(order);
        }
        orders
    }

    #[test]
    fn merging_does_not_depend_on_the_order() {
        let expected = merge(sample());
        for order in orders(&sample()) {
            assert_eq!(merge(order), expected);
        }
    }

    #[test]
    fn writing_the_merge_leaves_the_store_as_writing_every_update() {
        let expected = Store::after(&sample());
        for order in orders(&sample()) {
            assert_eq!(Store::after(&merge(order.clone())), expected);
            assert_eq!(
                Store::after(&order),
                expected,
                "the model itself is order-independent"
            );
        }
    }

    #[test]
    fn the_merge_is_also_right_on_top_of_stored_state() {
        let earlier = vec![event(
            "a",
            25,
            &[
                (TextField::City, "Old"),
                (TextField::UserDeclaredState, "X"),
            ],
        )];
        let mut expected = Store::after(&earlier);
        sample().iter().for_each(|update| expected.apply(update));
        let mut merged = Store::after(&earlier);
        merge(sample())
            .iter()
            .for_each(|update| merged.apply(update));
        assert_eq!(merged, expected);
    }

    #[test]
    fn one_device_costs_one_update_per_winning_version() {
        let merged = merge(sample());
        let versions = |device: &str| -> Vec<i64> {
            merged
                .iter()
                .filter(|u| u.device_id == device)
                .map(|u| u.version)
                .collect()
        };
        // a: 10 keeps State, 20 keeps Country and the earliest declaration, 30 City/FcmToken,
        // 40 the winning declaration.
        assert_eq!(versions("a"), vec![10, 20, 30, 40]);
        assert_eq!(versions("b"), vec![5]);
        assert_eq!(versions("c"), vec![7]);
        let b = merged.iter().find(|u| u.device_id == "b").unwrap();
        assert_eq!(b.text[&TextField::State], "Kerala");
    }

    #[test]
    fn newest_update_carries_earliest_first_access_and_latest_contact() {
        let merged = merge(sample());
        let newest = merged.iter().rfind(|u| u.device_id == "a").unwrap();
        assert_eq!(newest.version, 40);
        assert_eq!(newest.first_access, Some(900));
        assert_eq!(newest.last_contact, contact("2021-01-01T00:00:00+01:00"));
        let older = merged
            .iter()
            .filter(|u| u.device_id == "a" && u.version < 40);
        assert!(older
            .clone()
            .all(|u| u.first_access.is_none() && u.last_contact.is_none()));
    }

    #[test]
    fn first_access_values_of_one_64_ms_step_keep_the_later_as_cassandra_does() {
        let with_first_access = |version, first_access| ProfileUpdate {
            first_access: Some(first_access),
            ..event("a", version, &[(TextField::City, "Pune")])
        };
        // 1,024 and 1,087 share the step 16; 1,023 is in the step before.
        for updates in [
            vec![with_first_access(1, 1_024), with_first_access(2, 1_087)],
            vec![with_first_access(2, 1_087), with_first_access(1, 1_024)],
        ] {
            let merged = merge(updates);
            assert_eq!(merged.last().unwrap().first_access, Some(1_087));
        }
        let merged = merge(vec![
            with_first_access(1, 1_087),
            with_first_access(2, 1_023),
        ]);
        assert_eq!(merged.last().unwrap().first_access, Some(1_023));
    }

    #[test]
    fn a_replayed_batch_merges_to_the_same_updates() {
        let twice: Vec<ProfileUpdate> = sample().into_iter().chain(sample()).collect();
        assert_eq!(merge(twice), merge(sample()));
    }
}
