//! Kafka: the brokers, the consumer groups' base name, librdkafka's extra settings and the
//! topics.

use clap::Args;

use super::{non_empty, Rule, Secret};

#[derive(Args, Debug, Clone)]
pub struct KafkaSettings {
    /// Bootstrap servers.
    #[arg(
        long = "kafka-brokers",
        value_name = "KAFKA_BROKERS",
        env = "KAFKA_BROKERS",
        default_value = "127.0.0.1:9092",
        value_parser = Rule(non_empty)
    )]
    pub brokers: String,
    /// Base of the service's three consumer group ids, one per role:
    /// `{KAFKA_GROUP_ID}.profiles`, `.requests` and `.refresh` (on their first start they take
    /// over the offsets of the group `KAFKA_GROUP_ID` that earlier versions used).
    #[arg(
        long = "kafka-group-id",
        value_name = "KAFKA_GROUP_ID",
        env = "KAFKA_GROUP_ID",
        default_value = "hawkeye-customer-cache",
        value_parser = Rule(non_empty)
    )]
    pub group_id: String,
    /// Extra librdkafka settings, `key=value` pairs separated by `,` (SASL/TLS etc.).
    // The values are secrets: they carry SASL passwords.
    #[arg(
        long = "kafka-config",
        value_name = "KAFKA_CONFIG",
        env = "KAFKA_CONFIG",
        default_value = "",
        hide_env_values = true,
        value_parser = Rule(kafka_config)
    )]
    pub extra: std::vec::Vec<(String, Secret)>,
    #[command(flatten)]
    pub topics: Topics,
}

impl KafkaSettings {
    /// Settings without extra librdkafka settings (tools and tests).
    pub fn new(brokers: impl Into<String>, group_id: impl Into<String>, topics: Topics) -> Self {
        KafkaSettings {
            brokers: brokers.into(),
            group_id: group_id.into(),
            extra: Vec::new(),
            topics,
        }
    }
}

/// Names of every topic the service reads or writes.
#[derive(Args, Debug, Clone)]
pub struct Topics {
    /// Device profile events in: one topic or several, comma separated.
    #[arg(
        long = "topic-profile-updates",
        value_name = "TOPIC_PROFILE_UPDATES",
        env = "TOPIC_PROFILE_UPDATES",
        default_value = "device.profile.updates",
        value_parser = Rule(topic_list)
    )]
    pub profile_updates: std::vec::Vec<String>,
    /// Rejected device profile events out.
    #[arg(
        long = "topic-profile-dlq",
        value_name = "TOPIC_PROFILE_DLQ",
        env = "TOPIC_PROFILE_DLQ",
        default_value = "device.profile.updates.dlq",
        value_parser = Rule(topic_name)
    )]
    pub profile_dlq: String,
    /// Refresh triggers in.
    #[arg(
        long = "topic-refresh",
        value_name = "TOPIC_REFRESH",
        env = "TOPIC_REFRESH",
        default_value = "hawkeye.customer.cache.refresh",
        value_parser = Rule(topic_name)
    )]
    pub refresh: String,
    /// Cache requests in.
    #[arg(
        long = "topic-get",
        value_name = "TOPIC_GET",
        env = "TOPIC_GET",
        default_value = "hawkeye.customer.cache.get",
        value_parser = Rule(topic_name)
    )]
    pub get: String,
    /// Default reply topic.
    #[arg(
        long = "topic-reply",
        value_name = "TOPIC_REPLY",
        env = "TOPIC_REPLY",
        default_value = "hawkeye.customer.cache.reply",
        value_parser = Rule(topic_name)
    )]
    pub reply: String,
    /// Operational events out.
    #[arg(
        long = "topic-notifications",
        value_name = "TOPIC_NOTIFICATIONS",
        env = "TOPIC_NOTIFICATIONS",
        default_value = "hawkeye.customer.cache.notifications",
        value_parser = Rule(topic_name)
    )]
    pub notifications: String,
}

/// Kafka's own rule for topic names: 1 to 249 characters of `[a-zA-Z0-9._-]`.
pub fn is_valid_topic_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 249
        && name != "."
        && name != ".."
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

fn topic_name(value: &str) -> Result<String, String> {
    let name = value.trim();
    if is_valid_topic_name(name) {
        Ok(name.to_string())
    } else {
        Err(format!(
            "{value:?} is not a Kafka topic name (1-249 of a-z A-Z 0-9 . _ -)"
        ))
    }
}

/// One topic or several, comma separated (as Kafka Connect's `topics`); the first one named
/// comes first, a repeated one is dropped.
fn topic_list(value: &str) -> Result<Vec<String>, String> {
    let mut topics: Vec<String> = Vec::new();
    for entry in value.split(',').filter(|entry| !entry.trim().is_empty()) {
        let topic = topic_name(entry)?;
        if !topics.contains(&topic) {
            topics.push(topic);
        }
    }
    if topics.is_empty() {
        return Err("is empty; give a topic or several, comma separated".to_string());
    }
    Ok(topics)
}

fn kafka_config(raw: &str) -> Result<Vec<(String, Secret)>, String> {
    raw.split(',')
        .map(str::trim)
        .filter(|pair| !pair.is_empty())
        .enumerate()
        .map(|(position, pair)| match pair.split_once('=') {
            Some((key, value)) if !key.trim().is_empty() => {
                Ok((key.trim().to_string(), Secret::new(value.trim())))
            }
            // Nothing of the entry is shown: it may be the tail of a password holding a ','.
            _ => Err(format!(
                "expected key=value pairs separated by ',' (values cannot contain ','), \
                 entry {} has no key=",
                position + 1
            )),
        })
        .collect()
}

/// Short topic names for the unit tests of the clients made from settings.
#[cfg(test)]
impl Topics {
    pub(crate) fn example() -> Self {
        Topics {
            profile_updates: vec!["t".into()],
            profile_dlq: "t.dlq".into(),
            refresh: "r".into(),
            get: "g".into(),
            reply: "re".into(),
            notifications: "n".into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::defaults;
    use super::super::testing::{parse, rejected};
    use super::KafkaSettings;

    #[test]
    fn defaults_are_the_contract_defaults() {
        let kafka: KafkaSettings = defaults();
        assert_eq!(kafka.brokers, "127.0.0.1:9092");
        assert_eq!(kafka.group_id, "hawkeye-customer-cache");
        assert!(kafka.extra.is_empty());
        assert_eq!(kafka.topics.profile_updates, ["device.profile.updates"]);
        assert_eq!(kafka.topics.profile_dlq, "device.profile.updates.dlq");
        assert_eq!(kafka.topics.reply, "hawkeye.customer.cache.reply");
    }

    #[test]
    fn a_rejected_value_names_the_variable_in_one_line() {
        let err = rejected(&["--kafka-brokers", " "]);
        assert_eq!(err.to_string(), "invalid setting KAFKA_BROKERS: is empty");
    }

    #[test]
    fn kafka_config_pairs_are_parsed_and_hidden() {
        let kafka = parse(&[
            "--kafka-config",
            "security.protocol=SASL_SSL, sasl.password=hunter2",
        ])
        .kafka;
        assert_eq!(kafka.extra[1].0, "sasl.password");
        assert_eq!(kafka.extra[1].1.expose(), "hunter2");
        assert!(!format!("{kafka:?}").contains("hunter2"));
    }

    #[test]
    fn kafka_config_without_equals_is_rejected_without_echoing_the_value() {
        let err = rejected(&["--kafka-config", "sasl.password"]);
        assert_eq!(err.setting, "KAFKA_CONFIG");
        // A password with a ',' splits into an entry that is the password's tail.
        let err = rejected(&["--kafka-config", "sasl.password=hun,ter2-tail"]);
        assert!(!err.to_string().contains("ter2"), "{err}");
    }

    #[test]
    fn profile_topics_are_a_list_without_repeats() {
        let all = parse(&["--topic-profile-updates", "a.updates, b.updates,a.updates,"]);
        assert_eq!(all.kafka.topics.profile_updates, ["a.updates", "b.updates"]);
        for bad in [" , ", "a.updates,bad topic"] {
            let err = rejected(&["--topic-profile-updates", bad]);
            assert_eq!(err.setting, "TOPIC_PROFILE_UPDATES", "{bad:?}");
        }
    }

    #[test]
    fn topics_are_checked() {
        assert_eq!(rejected(&["--topic-get", "bad topic"]).setting, "TOPIC_GET");
    }
}
