//! Names of the customer cache's Redis keys (layout in `docs/architecture.md`). The live hash is
//! `ENVIRONMENT_NAME:hawkeye:customer_cache`, as it always was; every other key starts with a
//! hash tag that puts it into the live hash's slot, `{ENVIRONMENT_NAME:hawkeye:customer_cache}`,
//! so that the publish script may touch them all on a Redis Cluster.

use crate::stores::redis::slots::same_slot_name;

#[derive(Debug, Clone)]
pub struct CacheKeys {
    live: String,
    /// The start of every other key: in the live hash's slot.
    companion: String,
}

impl CacheKeys {
    pub fn new(environment_name: &str) -> Self {
        let live = format!("{environment_name}:hawkeye:customer_cache");
        CacheKeys {
            companion: same_slot_name(&live),
            live,
        }
    }

    /// Hash: serial number → cache entry JSON.
    pub fn live(&self) -> &str {
        &self.live
    }

    /// Hash: `generation`, `refreshed_at`, `devices`; present once a refresh has succeeded.
    pub fn meta(&self) -> String {
        format!("{}:meta", self.companion)
    }

    /// Stream of `last_contact` pushes since the current generation.
    pub fn changes(&self) -> String {
        format!("{}:changes", self.companion)
    }

    /// The refresh lock shared by every instance.
    pub fn lock(&self) -> String {
        format!("{}:lock", self.companion)
    }

    /// The hash a refresh builds before publishing it.
    pub fn staging(&self, run_id: &str) -> String {
        format!("{}:staging:{run_id}", self.companion)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use redis::cluster_routing::Slot;

    #[test]
    fn every_key_carries_the_environment_name_and_lands_in_one_slot() {
        let keys = CacheKeys::new("prod");
        assert_eq!(keys.live(), "prod:hawkeye:customer_cache");
        assert_eq!(keys.meta(), "{prod:hawkeye:customer_cache}:meta");
        assert_eq!(keys.changes(), "{prod:hawkeye:customer_cache}:changes");
        assert_eq!(keys.lock(), "{prod:hawkeye:customer_cache}:lock");
        assert_eq!(
            keys.staging("r1"),
            "{prod:hawkeye:customer_cache}:staging:r1"
        );
        for environment in ["prod", "", "a{b}", "}", "{}", "x}y"] {
            let keys = CacheKeys::new(environment);
            let slot = Slot::for_key(keys.live());
            for key in [keys.meta(), keys.changes(), keys.lock(), keys.staging("r1")] {
                assert_eq!(Slot::for_key(&key), slot, "{key}");
            }
        }
        assert_ne!(CacheKeys::new("a{b}").meta(), CacheKeys::new("c{b}").meta());
    }
}
