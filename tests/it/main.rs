//! Integration tests against the real local stack (`scripts/stack`): one module per behaviour.
//! They read the stack's endpoints from the environment (`eval "$(scripts/stack env)"`, which
//! `scripts/test` does) and start nothing but the service itself.

mod common;

mod alerts_prometheus;
mod apis_bruin;
mod apis_hawkeye;
mod consumer_groups;
mod deploy_grants;
mod deploy_metrics;
mod get_chunks;
mod get_clients;
mod get_filters;
mod get_freshness;
mod get_reply_route;
mod get_status;
mod metrics_scrape;
mod profile_adoption;
mod profile_dead_letters;
mod profile_deletes;
mod profile_first_access;
mod profile_large_numbers;
mod profile_order;
mod profile_rebuild;
mod profile_replay_dlq;
mod profile_restart;
mod profile_store_outage;
mod profile_timestamp_upgrade;
mod profile_topics;
mod profile_upsert;
mod profile_verify;
mod redis_cluster;
mod refresh_atomicity;
mod refresh_cache;
mod refresh_failures;
mod refresh_instances;
mod refresh_publish;
mod refresh_shutdown;
mod refresh_triggers;
mod startup;
mod store_errors;
