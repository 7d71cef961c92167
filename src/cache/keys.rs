//! Names of the customer cache's Redis keys (layout in `docs/architecture.md`). Every key starts
//! with `{ENVIRONMENT_NAME}:hawkeye:customer_cache`.

#[derive(Debug, Clone)]
pub struct CacheKeys {
    live: String,
}

impl CacheKeys {
    pub fn new(environment_name: &str) -> Self {
        CacheKeys {
            live: format!("{environment_name}:hawkeye:customer_cache"),
        }
    }

    /// Hash: serial number → cache entry JSON.
    pub fn live(&self) -> &str {
        &self.live
    }

    /// Hash: `generation`, `refreshed_at`, `devices`; present once a refresh has succeeded.
    pub fn meta(&self) -> String {
        format!("{}:meta", self.live)
    }

    /// Stream of `last_contact` pushes since the current generation.
    pub fn changes(&self) -> String {
        format!("{}:changes", self.live)
    }

    /// The refresh lock shared by every instance.
    pub fn lock(&self) -> String {
        format!("{}:lock", self.live)
    }

    /// The hash a refresh builds before publishing it.
    pub fn staging(&self, run_id: &str) -> String {
        format!("{}:staging:{run_id}", self.live)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_key_carries_the_environment_prefix() {
        let keys = CacheKeys::new("prod");
        assert_eq!(keys.live(), "prod:hawkeye:customer_cache");
        assert_eq!(keys.meta(), "prod:hawkeye:customer_cache:meta");
        assert_eq!(keys.staging("r1"), "prod:hawkeye:customer_cache:staging:r1");
    }
}
