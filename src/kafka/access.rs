//! What the brokers refuse this client, said in one line that names the setting to fix or the
//! grant to add (README, "Security"). librdkafka reports a refused login or TLS handshake only
//! as an error event and then keeps retrying, so start-up would otherwise wait out its timeout
//! and end with "brokers do not answer"; authorization errors come back as bare codes.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use rdkafka::error::{KafkaError, RDKafkaErrorCode};

use crate::sync;

/// Where the README says which rights the service needs.
pub const GRANTS: &str = "README, \"Security\"";

/// The last login or TLS refusal librdkafka reported, as the line to stop start-up with.
static REFUSED_CONNECTION: Mutex<Option<String>> = Mutex::new(None);

/// Whether a broker refused a consumer group of this process: librdkafka reports it only as
/// an error event (the coordinator lookup), while the request that needed the group times out.
static REFUSED_GROUP: AtomicBool = AtomicBool::new(false);

/// Called with every error event of every client of the process.
pub fn note_error(error: &KafkaError, reason: &str) {
    let code = error.rdkafka_error_code();
    if code == Some(RDKafkaErrorCode::GroupAuthorizationFailed) {
        REFUSED_GROUP.store(true, Ordering::Relaxed);
    }
    if let Some(line) = connection_refusal(code, reason) {
        *sync::lock(&REFUSED_CONNECTION) = Some(line);
    }
}

/// Whether a broker refused one of the process's consumer groups so far.
pub fn group_refused() -> bool {
    REFUSED_GROUP.load(Ordering::Relaxed)
}

/// The login or TLS refusal reported so far, if any.
pub fn refused_connection() -> Option<String> {
    sync::lock(&REFUSED_CONNECTION).clone()
}

/// The line for an error event that says the brokers refused this client's credentials or
/// TLS, naming the `KAFKA_CONFIG` keys that decide them; `None` for any other event (a broker
/// down, a timeout: those are waited out).
fn connection_refusal(code: Option<RDKafkaErrorCode>, reason: &str) -> Option<String> {
    // librdkafka words a TLS failure after the handshake ("Receive failed: … SSL routines::…
    // alert bad certificate") as a transport failure.
    let tls = reason.contains("SSL handshake failed") || reason.contains("SSL routines");
    // A connection lost during the SASL exchange is reported as an authentication error too.
    let lost = reason.contains("Broker transport failure");
    let keys = match code? {
        _ if lost => return None,
        RDKafkaErrorCode::Authentication | RDKafkaErrorCode::SaslAuthenticationFailed => {
            "sasl.mechanisms, sasl.username, sasl.password"
        }
        _ if tls && reason.contains("certificate verify failed") => "ssl.ca.location",
        RDKafkaErrorCode::SSL => "ssl.certificate.location, ssl.key.location",
        _ if tls => "ssl.certificate.location, ssl.key.location",
        _ => return None,
    };
    Some(format!(
        "Kafka refused the connection (KAFKA_CONFIG {keys}): {}",
        reason.trim()
    ))
}

/// The line for a refused request on a topic or group, naming the grant to add; `None` when
/// `code` is not a refusal.
pub fn missing_grant(code: RDKafkaErrorCode, operation: &str, resource: &str) -> Option<String> {
    match code {
        RDKafkaErrorCode::TopicAuthorizationFailed
        | RDKafkaErrorCode::GroupAuthorizationFailed
        | RDKafkaErrorCode::ClusterAuthorizationFailed => Some(format!(
            "Kafka refuses {operation} on {resource} to this client: grant it ({GRANTS})"
        )),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refused_login_names_the_sasl_settings() {
        let line = connection_refusal(
            Some(RDKafkaErrorCode::Authentication),
            "SASL authentication error: Authentication failed during authentication due to \
             invalid credentials with SASL mechanism SCRAM-SHA-512",
        );
        let line = line.unwrap_or_default();
        assert!(line.starts_with("Kafka refused the connection (KAFKA_CONFIG sasl.mechanisms, sasl.username, sasl.password): SASL authentication error"), "{line}");
    }

    #[test]
    fn an_untrusted_broker_names_the_ca_and_a_refused_client_certificate_names_the_certificate() {
        let untrusted = connection_refusal(
            Some(RDKafkaErrorCode::SSL),
            "ssl://127.0.0.1:9094/bootstrap: SSL handshake failed: error:0A000086:SSL routines::certificate verify failed: broker certificate could not be verified",
        );
        assert!(untrusted
            .unwrap_or_default()
            .contains("(KAFKA_CONFIG ssl.ca.location)"));
        let no_certificate = connection_refusal(
            Some(RDKafkaErrorCode::BrokerTransportFailure),
            "ssl://127.0.0.1:29094/bootstrap: Receive failed: ../ssl/record/rec_layer_s3.c:1601:ssl3_read_bytes error:0A000412:SSL routines::sslv3 alert bad certificate: SSL alert number 42 (after 0ms in state APIVERSION_QUERY)",
        );
        assert!(no_certificate
            .unwrap_or_default()
            .contains("(KAFKA_CONFIG ssl.certificate.location, ssl.key.location)"));
    }

    #[test]
    fn a_broker_that_is_down_is_not_a_refusal() {
        for (code, reason) in [
            (
                RDKafkaErrorCode::BrokerTransportFailure,
                "127.0.0.1:9092/bootstrap: Connect to ipv4#127.0.0.1:9092 failed: Connection refused",
            ),
            (RDKafkaErrorCode::AllBrokersDown, "1/1 brokers are down"),
            (
                RDKafkaErrorCode::Authentication,
                "GroupCoordinator: SASL authentication error: SaslAuthenticateRequest failed: Local: Broker transport failure (after 0ms in state DOWN)",
            ),
        ] {
            assert_eq!(connection_refusal(Some(code), reason), None);
        }
    }

    #[test]
    fn only_authorization_errors_are_missing_grants() {
        assert_eq!(
            missing_grant(
                RDKafkaErrorCode::GroupAuthorizationFailed,
                "READ",
                "group g.profiles"
            )
            .as_deref(),
            Some("Kafka refuses READ on group g.profiles to this client: grant it (README, \"Security\")")
        );
        assert_eq!(
            missing_grant(RDKafkaErrorCode::UnknownTopicOrPartition, "READ", "topic t"),
            None
        );
    }
}
