//! Redis Cluster hash slots. A script or multi-key command may only touch keys of one slot, so
//! every key that goes with another (a device's versions hash, the customer cache's meta,
//! changes, lock and staging keys) is named to land in that key's slot. The names are the same
//! on one server and on a cluster, so a deployment can move from one to the other.
//!
//! Redis hashes the text inside the first `{` and the first `}` after it when that text is not
//! empty (the key's hash tag), else the whole key.

use std::collections::HashMap;
use std::sync::LazyLock;

use redis::cluster_routing::Slot;

const SLOTS: usize = 16384;

/// For every slot, the smallest decimal number whose slot it is (all are found below 2^20:
/// `every_slot_has_a_number_tag`), computed once.
static NUMBER_TAGS: LazyLock<HashMap<Slot, u32>> = LazyLock::new(|| {
    let mut tags = HashMap::with_capacity(SLOTS);
    let mut number = 0_u32;
    while tags.len() < SLOTS {
        tags.entry(Slot::for_key(number.to_string()))
            .or_insert(number);
        number += 1;
    }
    tags
});

/// The key's hash tag: what Redis hashes instead of the whole key.
fn hash_tag(key: &str) -> Option<&str> {
    let open = key.find('{')?;
    let close = key[open + 1..].find('}')?;
    let tag = &key[open + 1..open + 1 + close];
    (!tag.is_empty()).then_some(tag)
}

/// A name in `key`'s slot, different for every key, to build the names of the keys that go with
/// it: `{key}` for a key that has no hash tag and no `}`, else a hash tag that puts a key into
/// `key`'s slot followed by `key` itself. That tag is the key's own, or, for a key without one
/// that holds a `}` (hashed whole, and no tag can hold a `}`), the smallest decimal number
/// whose slot is the key's.
pub fn same_slot_name(key: &str) -> String {
    match hash_tag(key) {
        Some(tag) => format!("{{{tag}}}{key}"),
        None if !key.is_empty() && !key.contains('}') => format!("{{{key}}}"),
        None => {
            let number = NUMBER_TAGS[&Slot::for_key(key)];
            format!("{{{number}}}{key}")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    /// Ids of every shape of braces, alone and among text.
    fn awkward_ids() -> Vec<String> {
        let pieces = [
            "", "a", "{", "}", "{}", "}{", "{a}", "{{", "}}", "x{y", "{}}", "b}c{d}",
        ];
        let mut ids = Vec::new();
        for first in pieces {
            for second in pieces {
                for third in pieces {
                    ids.push(format!("{first}{second}{third}"));
                }
            }
        }
        ids.extend((0..2000).map(|n| format!("device-{n}")));
        ids
    }

    #[test]
    fn the_name_lands_in_the_slot_of_its_key_for_any_id() {
        for prefix in ["device:", "", "{tenant}:device:", "d}", "{"] {
            for id in awkward_ids() {
                let key = format!("{prefix}{id}");
                let name = format!("versions:{}", same_slot_name(&key));
                assert_eq!(
                    Slot::for_key(&name),
                    Slot::for_key(&key),
                    "{key:?} and {name:?}"
                );
                let suffixed = format!("{}:meta", same_slot_name(&key));
                assert_eq!(
                    Slot::for_key(&suffixed),
                    Slot::for_key(&key),
                    "{suffixed:?}"
                );
            }
        }
    }

    #[test]
    fn names_of_different_keys_differ() {
        let ids = awkward_ids();
        let names: HashSet<String> = ids.iter().map(|id| same_slot_name(id)).collect();
        let distinct: HashSet<&String> = ids.iter().collect();
        assert_eq!(names.len(), distinct.len());
    }

    #[test]
    fn ordinary_keys_are_wrapped_whole() {
        assert_eq!(same_slot_name("device:d-1"), "{device:d-1}");
        assert_eq!(same_slot_name("device:{a}b"), "{a}device:{a}b");
        // An empty `{}` is no hash tag: the key is hashed whole, like one with a lone `}`.
        let empty_tag = same_slot_name("device:{}x");
        assert!(empty_tag.ends_with("}device:{}x"), "{empty_tag}");
        assert_eq!(Slot::for_key(&empty_tag), Slot::for_key("device:{}x"));
    }

    #[test]
    fn every_slot_has_a_number_tag() {
        assert_eq!(NUMBER_TAGS.len(), SLOTS);
        for (slot, number) in NUMBER_TAGS.iter() {
            assert!(*number < 1 << 20);
            assert_eq!(Slot::for_key(number.to_string()), *slot);
        }
    }
}
