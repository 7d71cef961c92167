//! The simulator's shared state: the fleet, sessions and tokens, the failure modes in force
//! and the counters tests read.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio_util::sync::CancellationToken;

use hawkeye_customer_cache::sync::lock;

use super::fleet::Fleet;
use super::SimConfig;

/// The endpoints of the simulator.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Route {
    Login,
    Probes,
    Token,
    Inventory,
    Attribute,
}

impl Route {
    fn is_hawkeye(self) -> bool {
        matches!(self, Route::Login | Route::Probes)
    }
}

/// A failure a call can be made to answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// HTTP 500.
    ServerError,
    /// HTTP 503.
    Unavailable,
    /// HTTP 429 with `Retry-After` in seconds.
    RateLimited { retry_after_secs: u64 },
    /// No answer for `stall_secs` (then 504): the client's timeout fires first.
    Stall,
    /// HTTP 200 whose JSON body is cut off in the middle (a proxy dropping the connection).
    TruncatedJson,
    /// HTTP 200 whose body is not JSON at all (an HTML error page of a gateway).
    InvalidJson,
}

/// The failure modes in force; changed at runtime through `RunningSim`.
#[derive(Debug, Default)]
pub(super) struct Faults {
    pub hawkeye_down: bool,
    pub failing_probe_page: Option<usize>,
    pub failing_serials: HashSet<String>,
    pub scripted: HashMap<Route, VecDeque<Fault>>,
    pub latency: Duration,
    pub error_rate: f64,
    pub rate_limit_rate: f64,
    pub timeout_rate: f64,
}

/// Counts of what the simulator saw, at one moment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SimStats {
    /// Calls of `POST /login`, and sessions granted.
    pub login_calls: u64,
    pub logins: u64,
    /// Calls of `GET /probes`.
    pub probe_calls: u64,
    /// Calls of `POST /identity/connect/token`, and tokens granted.
    pub token_calls: u64,
    pub token_grants: u64,
    pub inventory_calls: u64,
    pub attribute_calls: u64,
    /// Calls answered 401 for a missing, unknown or expired session or token.
    pub unauthorized: u64,
    /// Calls answered with a failure mode (5xx, 429, stall).
    pub faults: u64,
    /// Most Bruin inventory/attribute calls in flight at once.
    pub max_bruin_in_flight: u64,
}

#[derive(Default)]
pub(super) struct Counters {
    pub login_calls: AtomicU64,
    pub logins: AtomicU64,
    pub probe_calls: AtomicU64,
    pub token_calls: AtomicU64,
    pub token_grants: AtomicU64,
    pub inventory_calls: AtomicU64,
    pub attribute_calls: AtomicU64,
    pub unauthorized: AtomicU64,
    pub faults: AtomicU64,
    bruin_in_flight: AtomicU64,
    max_bruin_in_flight: AtomicU64,
}

impl Counters {
    pub fn snapshot(&self) -> SimStats {
        let read = |counter: &AtomicU64| counter.load(Ordering::SeqCst);
        SimStats {
            login_calls: read(&self.login_calls),
            logins: read(&self.logins),
            probe_calls: read(&self.probe_calls),
            token_calls: read(&self.token_calls),
            token_grants: read(&self.token_grants),
            inventory_calls: read(&self.inventory_calls),
            attribute_calls: read(&self.attribute_calls),
            unauthorized: read(&self.unauthorized),
            faults: read(&self.faults),
            max_bruin_in_flight: read(&self.max_bruin_in_flight),
        }
    }

    fn counter(&self, route: Route) -> &AtomicU64 {
        match route {
            Route::Login => &self.login_calls,
            Route::Probes => &self.probe_calls,
            Route::Token => &self.token_calls,
            Route::Inventory => &self.inventory_calls,
            Route::Attribute => &self.attribute_calls,
        }
    }
}

/// Counts a Bruin call as in flight until dropped (also when the client hangs up).
pub(super) struct InFlight<'a>(&'a Counters);

impl<'a> InFlight<'a> {
    pub fn enter(counters: &'a Counters) -> Self {
        let now = counters.bruin_in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        counters
            .max_bruin_in_flight
            .fetch_max(now, Ordering::SeqCst);
        InFlight(counters)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.bruin_in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

pub(super) struct Shared {
    pub config: SimConfig,
    pub fleet: Fleet,
    pub stats: Counters,
    faults: Mutex<Faults>,
    rng: Mutex<StdRng>,
    sessions: Mutex<HashMap<String, Instant>>,
    tokens: Mutex<HashMap<String, Instant>>,
    stop: CancellationToken,
}

impl Shared {
    pub fn new(config: SimConfig, stop: CancellationToken) -> Self {
        let fleet = Fleet::generate(&config.fleet_shape());
        let faults = Faults {
            latency: Duration::from_millis(config.latency_ms),
            error_rate: config.error_rate,
            rate_limit_rate: config.rate_limit_rate,
            timeout_rate: config.timeout_rate,
            ..Faults::default()
        };
        Shared {
            rng: Mutex::new(StdRng::seed_from_u64(config.seed.wrapping_add(1))),
            config,
            fleet,
            stats: Counters::default(),
            faults: Mutex::new(faults),
            sessions: Mutex::default(),
            tokens: Mutex::default(),
            stop,
        }
    }

    pub fn faults(&self) -> MutexGuard<'_, Faults> {
        lock(&self.faults)
    }

    /// What every call goes through first: counted, delayed by the latency, then failed if a
    /// failure mode says so (`Some` is the answer to send).
    pub async fn gate(&self, route: Route) -> Option<Response> {
        self.stats.counter(route).fetch_add(1, Ordering::SeqCst);
        let latency = self.faults().latency;
        if !latency.is_zero() {
            tokio::time::sleep(latency).await;
        }
        let fault = self.pick_fault(route)?;
        self.stats.faults.fetch_add(1, Ordering::SeqCst);
        Some(self.answer_fault(fault).await)
    }

    fn pick_fault(&self, route: Route) -> Option<Fault> {
        let mut faults = self.faults();
        if route.is_hawkeye() && faults.hawkeye_down {
            return Some(Fault::Unavailable);
        }
        if let Some(fault) = faults
            .scripted
            .get_mut(&route)
            .and_then(VecDeque::pop_front)
        {
            return Some(fault);
        }
        let draw: f64 = lock(&self.rng).random();
        let (errors, limits, stalls) = (
            faults.error_rate,
            faults.rate_limit_rate,
            faults.timeout_rate,
        );
        if draw < errors {
            Some(if draw < errors / 2.0 {
                Fault::ServerError
            } else {
                Fault::Unavailable
            })
        } else if draw < errors + limits {
            Some(Fault::RateLimited {
                retry_after_secs: 1,
            })
        } else if draw < errors + limits + stalls {
            Some(Fault::Stall)
        } else {
            None
        }
    }

    pub async fn answer_fault(&self, fault: Fault) -> Response {
        match fault {
            Fault::ServerError => error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "simulated internal error",
            ),
            Fault::Unavailable => error(StatusCode::SERVICE_UNAVAILABLE, "simulated outage"),
            Fault::RateLimited { retry_after_secs } => {
                let mut response = error(StatusCode::TOO_MANY_REQUESTS, "simulated rate limit");
                if let Ok(value) = retry_after_secs.to_string().parse() {
                    response.headers_mut().insert(header::RETRY_AFTER, value);
                }
                response
            }
            Fault::Stall => {
                let stall = Duration::from_secs(self.config.stall_secs);
                tokio::select! {
                    _ = tokio::time::sleep(stall) => {}
                    _ = self.stop.cancelled() => {}
                }
                error(StatusCode::GATEWAY_TIMEOUT, "simulated stall")
            }
            Fault::TruncatedJson => ok_json_text(
                r#"{"total_count": "3", "count": 3, "records": [{"probeId": "1", "uid"#,
            ),
            Fault::InvalidJson => ok_json_text("<html><body>502 Bad Gateway</body></html>"),
        }
    }

    pub fn open_session(&self) -> String {
        self.stats.logins.fetch_add(1, Ordering::SeqCst);
        let ttl = Duration::from_secs(self.config.hawkeye_session_ttl_secs);
        grant(&self.sessions, ttl)
    }

    pub fn session_is_valid(&self, session: Option<&str>) -> bool {
        self.check(&self.sessions, session)
    }

    pub fn issue_token(&self) -> String {
        self.stats.token_grants.fetch_add(1, Ordering::SeqCst);
        grant(
            &self.tokens,
            Duration::from_secs(self.config.token_ttl_secs),
        )
    }

    pub fn token_is_valid(&self, token: Option<&str>) -> bool {
        self.check(&self.tokens, token)
    }

    pub fn expire_tokens(&self) {
        lock(&self.tokens).clear();
    }

    pub fn expire_sessions(&self) {
        lock(&self.sessions).clear();
    }

    fn check(&self, granted: &Mutex<HashMap<String, Instant>>, credential: Option<&str>) -> bool {
        let valid = credential
            .and_then(|value| lock(granted).get(value).copied())
            .is_some_and(|expiry| Instant::now() < expiry);
        if !valid {
            self.stats.unauthorized.fetch_add(1, Ordering::SeqCst);
        }
        valid
    }
}

fn grant(granted: &Mutex<HashMap<String, Instant>>, ttl: Duration) -> String {
    let value = uuid::Uuid::new_v4().simple().to_string();
    let mut granted = lock(granted);
    let now = Instant::now();
    granted.retain(|_, expiry| *expiry > now);
    granted.insert(value.clone(), now + ttl);
    value
}

/// A JSON error body, as both APIs send one.
/// A 200 answer labelled JSON whose body is `text` as is (for the malformed-answer faults).
fn ok_json_text(text: &'static str) -> Response {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        text,
    )
        .into_response()
}

pub(super) fn error(status: StatusCode, message: &str) -> Response {
    (status, Json(serde_json::json!({"error": message}))).into_response()
}
