//! The README's "Security" shows the Redis ACL rules and the Cassandra grants that
//! `deploy/security/` holds (the files `scripts/stack` applies to its secured stack, on which
//! `tests/faults/secured.rs` runs every job): with the defaults filled in, every statement of
//! the files is in the README word for word, so the documented rights are the tested ones.

const README: &str = include_str!("../../README.md");
const REDIS_ACL: &str = include_str!("../../deploy/security/redis-acl.txt");
const CASSANDRA_GRANTS: &str = include_str!("../../deploy/security/cassandra-grants.cql");

/// The statements of a grants file (comments and blank lines left out), with the defaults.
fn statements(file: &str, comment: &str, defaults: &[(&str, &str)]) -> Vec<String> {
    file.lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with(comment))
        .map(|line| {
            defaults
                .iter()
                .fold(line.to_string(), |line, (name, value)| {
                    line.replace(&format!("${{{name}}}"), value)
                })
        })
        .collect()
}

#[test]
fn the_readme_shows_every_redis_acl_rule_of_deploy_security() {
    let rules = statements(
        REDIS_ACL,
        "#",
        &[
            ("SERVICE_USER", "hawkeye-cache"),
            ("OPERATOR_USER", "hawkeye-operator"),
            ("ENVIRONMENT_NAME", "dev"),
            ("REDIS_DEVICE_KEY_PREFIX", "device:"),
        ],
    );
    assert_eq!(rules.len(), 2, "{rules:#?}");
    for rule in rules {
        assert!(README.contains(&rule), "the README lacks: {rule}");
    }
}

#[test]
fn the_readme_shows_every_cassandra_grant_of_deploy_security() {
    let grants: Vec<String> = statements(
        CASSANDRA_GRANTS,
        "--",
        &[
            ("SERVICE_USER", "hawkeye_cache"),
            ("OPERATOR_USER", "hawkeye_operator"),
            ("CASSANDRA_KEYSPACE", "device_db"),
        ],
    )
    .into_iter()
    .filter(|statement| statement.starts_with("GRANT"))
    .collect();
    assert_eq!(grants.len(), 5, "{grants:#?}");
    for grant in grants {
        assert!(README.contains(&grant), "the README lacks: {grant}");
    }
}
