//! A simulator of the Hawkeye/Ixia and Bruin APIs: one HTTP server that answers both with the
//! paths, authentication, pagination, field names and failure modes of `CONTRACT.md` §4.
//! The fleet is generated from a seed ([`fleet`]); failure modes can be changed while it runs,
//! and it knows the customer cache a correct refresh must build. See `docs/simulator.md`.

mod bruin;
pub mod fleet;
mod hawkeye;
mod state;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::routing::{get, post};
use axum::Router;
use reqwest::Url;
use serde_json::Value;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub use fleet::{Category, Device, Fleet, FleetShape};
use hawkeye_customer_cache::config::{BruinSettings, HawkeyeSettings, Secret};
use state::Shared;
pub use state::{Fault, Route, SimStats};

/// Everything the simulator can be told at start; also the flags of the `sim` subcommand.
#[derive(clap::Args, Debug, Clone, PartialEq)]
pub struct SimConfig {
    /// Seed of the generated fleet: the same seed gives the same probes and inventories.
    #[arg(long, env = "SIM_SEED", default_value_t = 42)]
    pub seed: u64,
    /// Probes in the fleet.
    #[arg(long, env = "SIM_DEVICES", default_value_t = 1000)]
    pub devices: usize,
    /// Share of probes never contacted (both lastUpdate "never").
    #[arg(long, env = "SIM_NEVER_CONTACTED_RATIO", default_value_t = 0.10)]
    pub never_contacted_ratio: f64,
    /// Share of probes without any Bruin inventory document.
    #[arg(long, env = "SIM_NO_INVENTORY_RATIO", default_value_t = 0.05)]
    pub no_inventory_ratio: f64,
    /// Share of probes with only inactive ("D") documents.
    #[arg(long, env = "SIM_INACTIVE_RATIO", default_value_t = 0.05)]
    pub inactive_ratio: f64,
    /// Share of probes whose only active document has another serviceNumber.
    #[arg(long, env = "SIM_SERIAL_MISMATCH_RATIO", default_value_t = 0.02)]
    pub serial_mismatch_ratio: f64,
    /// Share of probes with a non-monitorable (or no) management status.
    #[arg(long, env = "SIM_UNMONITORABLE_RATIO", default_value_t = 0.10)]
    pub unmonitorable_ratio: f64,
    /// Share of probes that are monitorable and have several active documents.
    #[arg(long, env = "SIM_MULTIPLE_INVENTORIES_RATIO", default_value_t = 0.02)]
    pub multiple_inventories_ratio: f64,
    /// Largest page of probes served, whatever `limit` asks.
    #[arg(long, env = "SIM_PAGE_LIMIT", default_value_t = 500)]
    pub page_limit: usize,
    /// Delay added to every call, in milliseconds.
    #[arg(long, env = "SIM_LATENCY_MS", default_value_t = 0)]
    pub latency_ms: u64,
    /// Share of calls answered 500 or 503.
    #[arg(long, env = "SIM_ERROR_RATE", default_value_t = 0.0)]
    pub error_rate: f64,
    /// Share of calls answered 429 with `Retry-After: 1`.
    #[arg(long, env = "SIM_RATE_LIMIT_RATE", default_value_t = 0.0)]
    pub rate_limit_rate: f64,
    /// Share of calls that stall for `stall_secs` (past a client's timeout).
    #[arg(long, env = "SIM_TIMEOUT_RATE", default_value_t = 0.0)]
    pub timeout_rate: f64,
    /// How long a stalled call sleeps before answering 504.
    #[arg(long, env = "SIM_STALL_SECS", default_value_t = 40)]
    pub stall_secs: u64,
    /// Lifetime of a Bruin access token (short: calls start answering 401).
    #[arg(long, env = "SIM_TOKEN_TTL_SECS", default_value_t = 3600)]
    pub token_ttl_secs: u64,
    /// Lifetime of a Hawkeye session cookie.
    #[arg(long, env = "SIM_HAWKEYE_SESSION_TTL_SECS", default_value_t = 3600)]
    pub hawkeye_session_ttl_secs: u64,
    #[arg(long, env = "SIM_USERNAME", default_value = "sim-user")]
    pub username: String,
    #[arg(long, env = "SIM_PASSWORD", default_value = "sim-password")]
    pub password: String,
    #[arg(long, env = "SIM_CLIENT_ID", default_value = "sim-client")]
    pub client_id: String,
    #[arg(long, env = "SIM_CLIENT_SECRET", default_value = "sim-secret")]
    pub client_secret: String,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            seed: 42,
            devices: 1000,
            never_contacted_ratio: 0.10,
            no_inventory_ratio: 0.05,
            inactive_ratio: 0.05,
            serial_mismatch_ratio: 0.02,
            unmonitorable_ratio: 0.10,
            multiple_inventories_ratio: 0.02,
            page_limit: 500,
            latency_ms: 0,
            error_rate: 0.0,
            rate_limit_rate: 0.0,
            timeout_rate: 0.0,
            stall_secs: 40,
            token_ttl_secs: 3600,
            hawkeye_session_ttl_secs: 3600,
            username: "sim-user".into(),
            password: "sim-password".into(),
            client_id: "sim-client".into(),
            client_secret: "sim-secret".into(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SimError {
    #[error("invalid simulator setting: {0}")]
    InvalidConfig(String),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: String,
        source: std::io::Error,
    },
}

impl SimConfig {
    fn validate(&self) -> Result<(), SimError> {
        let shares = [
            ("never_contacted_ratio", self.never_contacted_ratio),
            ("no_inventory_ratio", self.no_inventory_ratio),
            ("inactive_ratio", self.inactive_ratio),
            ("serial_mismatch_ratio", self.serial_mismatch_ratio),
            ("unmonitorable_ratio", self.unmonitorable_ratio),
            (
                "multiple_inventories_ratio",
                self.multiple_inventories_ratio,
            ),
            ("error_rate", self.error_rate),
            ("rate_limit_rate", self.rate_limit_rate),
            ("timeout_rate", self.timeout_rate),
        ];
        if let Some((name, value)) = shares.iter().find(|(_, v)| !(0.0..=1.0).contains(v)) {
            return Err(SimError::InvalidConfig(format!(
                "{name} {value} is not between 0 and 1"
            )));
        }
        let dropped: f64 = shares[..5].iter().map(|(_, v)| v).sum();
        if dropped + self.multiple_inventories_ratio > 1.0 {
            return Err(SimError::InvalidConfig(
                "the device ratios add up to more than 1".into(),
            ));
        }
        if self.page_limit == 0 {
            return Err(SimError::InvalidConfig(
                "page_limit must be at least 1".into(),
            ));
        }
        Ok(())
    }

    fn fleet_shape(&self) -> FleetShape {
        FleetShape {
            seed: self.seed,
            devices: self.devices,
            never_contacted_ratio: self.never_contacted_ratio,
            no_inventory_ratio: self.no_inventory_ratio,
            inactive_ratio: self.inactive_ratio,
            serial_mismatch_ratio: self.serial_mismatch_ratio,
            unmonitorable_ratio: self.unmonitorable_ratio,
            multiple_inventories_ratio: self.multiple_inventories_ratio,
        }
    }
}

pub struct Simulator;

impl Simulator {
    /// Generates the fleet and serves both APIs on `addr` (`127.0.0.1:0` picks a free port).
    pub async fn start(config: SimConfig, addr: &str) -> Result<RunningSim, SimError> {
        config.validate()?;
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|source| SimError::Bind {
                addr: addr.to_string(),
                source,
            })?;
        let local_addr = listener.local_addr().map_err(|source| SimError::Bind {
            addr: addr.to_string(),
            source,
        })?;
        let base = Url::parse(&format!("http://{local_addr}"))
            .map_err(|e| SimError::InvalidConfig(format!("no URL for {local_addr}: {e}")))?;
        let stop = CancellationToken::new();
        let shared = Arc::new(Shared::new(config, stop.clone()));
        let app = router(shared.clone());
        let server = tokio::spawn({
            let stop = stop.clone();
            async move {
                let serving =
                    axum::serve(listener, app).with_graceful_shutdown(stop.cancelled_owned());
                if let Err(e) = serving.await {
                    tracing::warn!(error = %e, "simulator server stopped with an error");
                }
            }
        });
        Ok(RunningSim {
            shared,
            addr: local_addr,
            base,
            stop,
            server: Some(server),
        })
    }
}

fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/login", post(hawkeye::login))
        .route("/probes", get(hawkeye::probes))
        .route("/identity/connect/token", post(bruin::token))
        .route("/api/Inventory", get(bruin::inventory))
        .route("/api/Inventory/Attribute", get(bruin::attribute))
        .with_state(shared)
}

/// A simulator serving in the background; stops when dropped or on [`RunningSim::shutdown`].
pub struct RunningSim {
    shared: Arc<Shared>,
    addr: SocketAddr,
    base: Url,
    stop: CancellationToken,
    server: Option<JoinHandle<()>>,
}

impl RunningSim {
    /// `http://host:port`: the value of `HAWKEYE_BASE_URL`, `BRUIN_BASE_URL` and `BRUIN_LOGIN_URL`.
    pub fn base_url(&self) -> String {
        self.base.as_str().trim_end_matches('/').to_string()
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn config(&self) -> &SimConfig {
        &self.shared.config
    }

    pub fn fleet(&self) -> &Fleet {
        &self.shared.fleet
    }

    /// Settings of a Hawkeye client with the simulator's credentials.
    pub fn hawkeye_settings(&self) -> HawkeyeSettings {
        HawkeyeSettings {
            base_url: self.url(),
            username: self.config().username.clone(),
            password: Secret::new(self.config().password.clone()),
        }
    }

    /// Settings of a Bruin client with the simulator's credentials.
    pub fn bruin_settings(&self) -> BruinSettings {
        BruinSettings {
            base_url: self.url(),
            login_url: self.url(),
            client_id: self.config().client_id.clone(),
            client_secret: Secret::new(self.config().client_secret.clone()),
        }
    }

    fn url(&self) -> Url {
        self.base.clone()
    }

    /// The `KEY=value` lines that point the service at this simulator.
    pub fn env_lines(&self) -> Vec<String> {
        let c = self.config();
        let url = self.base_url();
        vec![
            format!("HAWKEYE_BASE_URL={url}"),
            format!("HAWKEYE_USERNAME={}", c.username),
            format!("HAWKEYE_PASSWORD={}", c.password),
            format!("BRUIN_BASE_URL={url}"),
            format!("BRUIN_LOGIN_URL={url}"),
            format!("BRUIN_CLIENT_ID={}", c.client_id),
            format!("BRUIN_CLIENT_SECRET={}", c.client_secret),
        ]
    }

    /// Every Hawkeye call answers 503 while `down` is true.
    pub fn set_hawkeye_down(&self, down: bool) {
        self.shared.faults().hawkeye_down = down;
    }

    /// The page of probes with this 0-based index (offset / served page size) always answers 500.
    pub fn fail_probe_page(&self, page: Option<usize>) {
        self.shared.faults().failing_probe_page = page;
    }

    /// Makes Bruin answer 500 to every inventory call of `share` of the contacted devices,
    /// spread evenly over the fleet; returns their serials (`0.0` heals them all).
    pub fn fail_bruin_serials(&self, share: f64) -> Vec<String> {
        let contacted = self
            .fleet()
            .devices
            .iter()
            .filter(|d| d.category != Category::NeverContacted);
        let failing: Vec<String> = contacted
            .enumerate()
            .filter(|(position, _)| {
                ((*position + 1) as f64 * share).floor() > (*position as f64 * share).floor()
            })
            .map(|(_, device)| device.serial.clone())
            .collect();
        self.shared.faults().failing_serials = failing.iter().cloned().collect();
        failing
    }

    /// The next calls of `route` answer these faults, in order, before any other rule applies.
    pub fn inject(&self, route: Route, faults: impl IntoIterator<Item = Fault>) {
        self.shared
            .faults()
            .scripted
            .entry(route)
            .or_default()
            .extend(faults);
    }

    pub fn set_latency(&self, latency: Duration) {
        self.shared.faults().latency = latency;
    }

    pub fn set_error_rate(&self, rate: f64) {
        self.shared.faults().error_rate = rate;
    }

    pub fn set_rate_limit_rate(&self, rate: f64) {
        self.shared.faults().rate_limit_rate = rate;
    }

    pub fn set_timeout_rate(&self, rate: f64) {
        self.shared.faults().timeout_rate = rate;
    }

    /// Every Bruin token issued so far stops working: the next calls answer 401.
    pub fn expire_tokens(&self) {
        self.shared.expire_tokens();
    }

    /// Every Hawkeye session so far stops working: the next calls answer 401.
    pub fn expire_sessions(&self) {
        self.shared.expire_sessions();
    }

    pub fn stats(&self) -> SimStats {
        self.shared.stats.snapshot()
    }

    /// The customer cache a correct refresh builds (`CONTRACT.md` §4), in fleet order: every
    /// contacted device with a valid document whose management status is in `monitorable`.
    pub fn expected_cache(&self, monitorable: &[String]) -> Vec<Value> {
        self.fleet()
            .devices
            .iter()
            .filter(|d| matches!(d.category, Category::Monitorable | Category::Unmonitorable))
            .filter_map(|device| {
                let client = device.client.as_ref()?;
                let status = device.management_status(&client.client_id.to_string())?;
                monitorable
                    .iter()
                    .any(|m| m == status)
                    .then(|| device.cache_entry(client))
            })
            .collect()
    }

    /// Serials of the devices with more than one valid inventory document.
    pub fn expected_multiple_inventories(&self) -> Vec<String> {
        self.fleet()
            .devices
            .iter()
            .filter(|d| d.multiple_inventories)
            .map(|d| d.serial.clone())
            .collect()
    }

    /// Stops serving; calls in flight (even stalled ones) end at once.
    pub async fn shutdown(mut self) {
        self.stop.cancel();
        if let Some(server) = self.server.take() {
            if let Err(e) = server.await {
                tracing::warn!(error = %e, "simulator task failed");
            }
        }
    }
}

impl Drop for RunningSim {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}
