//! Everything `run` reads, and the service's own HTTP endpoint.

use std::net::SocketAddr;

use clap::Args;

use super::{
    ApiArgs, BruinSettings, ConfigError, HawkeyeSettings, KafkaSettings, PushSettings,
    RefreshSettings, Rule, ServeSettings, StoreSettings,
};

/// The settings of `run`, as parsed (`main` flattens them into the command).
#[derive(Args, Debug, Clone)]
pub struct ServiceSettings {
    #[command(flatten)]
    pub kafka: KafkaSettings,
    #[command(flatten)]
    pub stores: StoreSettings,
    #[command(flatten)]
    pub api: ApiArgs,
    #[command(flatten)]
    pub refresh: RefreshSettings,
    #[command(flatten)]
    pub serve: ServeSettings,
    #[command(flatten)]
    pub push: PushSettings,
    #[command(flatten)]
    pub http: HttpSettings,
}

/// Everything `run` needs, validated.
#[derive(Debug, Clone)]
pub struct RunSettings {
    pub kafka: KafkaSettings,
    pub stores: StoreSettings,
    pub hawkeye: HawkeyeSettings,
    pub bruin: BruinSettings,
    pub refresh: RefreshSettings,
    pub serve: ServeSettings,
    pub push: PushSettings,
    pub http_addr: SocketAddr,
}

impl ServiceSettings {
    /// The rules between settings; each value was checked when it was parsed.
    pub fn validate(self) -> Result<RunSettings, ConfigError> {
        let (hawkeye, bruin) = self.api.validate()?;
        self.stores.validate()?;
        Ok(RunSettings {
            kafka: self.kafka,
            stores: self.stores,
            hawkeye,
            bruin,
            refresh: self.refresh,
            serve: self.serve,
            push: self.push,
            http_addr: self.http.addr,
        })
    }
}

#[derive(Args, Debug, Clone)]
pub struct HttpSettings {
    /// Address of the `/health`, `/ready` and `/metrics` endpoints.
    #[arg(
        long = "http-addr",
        value_name = "HTTP_ADDR",
        env = "HTTP_ADDR",
        default_value = "127.0.0.1:9898",
        value_parser = Rule(socket_address)
    )]
    pub addr: SocketAddr,
}

fn socket_address(value: &str) -> Result<SocketAddr, String> {
    value
        .trim()
        .parse()
        .map_err(|_| format!("{value:?} is not an address such as 127.0.0.1:9898"))
}

#[cfg(test)]
mod tests {
    use super::super::defaults;
    use super::super::testing::{parse, rejected};
    use super::HttpSettings;

    /// The API settings `run` cannot do without.
    const APIS: [&str; 14] = [
        "--hawkeye-base-url",
        "http://hawkeye",
        "--hawkeye-username",
        "u",
        "--hawkeye-password",
        "p",
        "--bruin-base-url",
        "http://bruin",
        "--bruin-login-url",
        "http://login",
        "--bruin-client-id",
        "c",
        "--bruin-client-secret",
        "s",
    ];

    #[test]
    fn the_http_address_is_checked() {
        let http: HttpSettings = defaults();
        assert_eq!(http.addr.to_string(), "127.0.0.1:9898");
        assert_eq!(rejected(&["--http-addr", "x"]).setting, "HTTP_ADDR");
    }

    #[test]
    fn run_needs_the_apis_first_then_consistent_stores() {
        let err = parse(&["--cassandra-password", "x"])
            .validate()
            .unwrap_err();
        assert_eq!(err.setting, "HAWKEYE_BASE_URL");
        let with_apis = |extra: &[&str]| {
            let args: Vec<&str> = APIS.iter().copied().chain(extra.iter().copied()).collect();
            parse(&args).validate()
        };
        let err = with_apis(&["--cassandra-password", "x"]).unwrap_err();
        assert_eq!(err.setting, "CASSANDRA_USERNAME");
        let run = with_apis(&["--http-addr", "0.0.0.0:80"]).unwrap();
        assert_eq!(run.http_addr.to_string(), "0.0.0.0:80");
        assert_eq!(run.hawkeye.username, "u");
    }
}
