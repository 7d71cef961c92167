#!/usr/bin/env bash
# Kafka ACLs of hawkeye-customer-cache: what the service and the operator tools may do on the
# Kafka cluster (with allow.everyone.if.no.acl.found=false, nothing else).
#
# Run it as a Kafka admin, with Kafka's command line tools on the PATH:
#
#   KAFKA_BOOTSTRAP=broker1:9093 KAFKA_ADMIN_CONFIG=admin.properties deploy/security/kafka-acls.sh
#
#   KAFKA_BOOTSTRAP     brokers, host:port (required)
#   KAFKA_ADMIN_CONFIG  client properties of an admin principal: security.protocol, sasl.*,
#                       ssl.* (required)
#   SERVICE_USER        the service's principal name (default hawkeye-cache): its SCRAM user
#                       name, or the CN of its client certificate
#   OPERATOR_USER       the operator tools' principal (default hawkeye-operator)
#   KAFKA_GROUP_ID      the service's KAFKA_GROUP_ID (default hawkeye-customer-cache)
#
# scripts/stack applies this file to its secure stack (STACK_SECURE=on) at the first `up` and on
# `scripts/stack grants`. Each kafka-acls call allows every --operation on every resource it
# names. --add only adds: an ACL added by hand stays until removed (kafka-acls --remove).
set -euo pipefail
: "${KAFKA_BOOTSTRAP:?set KAFKA_BOOTSTRAP to the brokers (host:port)}"
: "${KAFKA_ADMIN_CONFIG:?set KAFKA_ADMIN_CONFIG to the client properties file of a Kafka admin}"
SERVICE_USER=${SERVICE_USER:-hawkeye-cache}
OPERATOR_USER=${OPERATOR_USER:-hawkeye-operator}
KAFKA_GROUP_ID=${KAFKA_GROUP_ID:-hawkeye-customer-cache}

# Apache Kafka names the tool kafka-acls.sh, Confluent kafka-acls; scripts/stack brings its own.
if ! type kafka-acls >/dev/null 2>&1; then
  kafka-acls() { kafka-acls.sh "$@"; }
fi

# ---- the service

# Topics it consumes: device profile events, refresh triggers, cache requests.
kafka-acls --bootstrap-server "$KAFKA_BOOTSTRAP" --command-config "$KAFKA_ADMIN_CONFIG" --add \
  --allow-principal "User:$SERVICE_USER" \
  --operation Read --operation Describe \
  --topic device.profile.updates \
  --topic hawkeye.customer.cache.refresh \
  --topic hawkeye.customer.cache.get

# Topics it produces to: dead letters, cache replies, operational notifications. A reply topic a
# requester names (kafka_replyTopic, within REPLY_TOPICS_ALLOWED) needs Write too; without it
# that request is counted as delivery_failed and logged with this grant.
kafka-acls --bootstrap-server "$KAFKA_BOOTSTRAP" --command-config "$KAFKA_ADMIN_CONFIG" --add \
  --allow-principal "User:$SERVICE_USER" \
  --operation Write --operation Describe \
  --topic device.profile.updates.dlq \
  --topic hawkeye.customer.cache.reply \
  --topic hawkeye.customer.cache.notifications

# It creates the topics that are missing at start. Leave this grant out when the topics are
# created beforehand: the service then asks for none.
kafka-acls --bootstrap-server "$KAFKA_BOOTSTRAP" --command-config "$KAFKA_ADMIN_CONFIG" --add \
  --allow-principal "User:$SERVICE_USER" \
  --operation Create \
  --topic device.profile.updates \
  --topic hawkeye.customer.cache.refresh \
  --topic hawkeye.customer.cache.get \
  --topic device.profile.updates.dlq \
  --topic hawkeye.customer.cache.reply \
  --topic hawkeye.customer.cache.notifications

# Its consumer groups: ${KAFKA_GROUP_ID}.profiles, .requests, .refresh, and the former group
# ${KAFKA_GROUP_ID} whose offsets they take over.
kafka-acls --bootstrap-server "$KAFKA_BOOTSTRAP" --command-config "$KAFKA_ADMIN_CONFIG" --add \
  --allow-principal "User:$SERVICE_USER" \
  --operation Read --operation Describe \
  --resource-pattern-type prefixed --group "$KAFKA_GROUP_ID"

# ---- the operator tools

# profile publish and replay-dlq write device profile events; `refresh` sends a refresh trigger
# and `get` a cache request (the tools run beside the service, whose topics exist).
kafka-acls --bootstrap-server "$KAFKA_BOOTSTRAP" --command-config "$KAFKA_ADMIN_CONFIG" --add \
  --allow-principal "User:$OPERATOR_USER" \
  --operation Write --operation Describe \
  --topic device.profile.updates \
  --topic hawkeye.customer.cache.refresh \
  --topic hawkeye.customer.cache.get

# replay-dlq reads the dead letters; a cache request's reply is read back.
kafka-acls --bootstrap-server "$KAFKA_BOOTSTRAP" --command-config "$KAFKA_ADMIN_CONFIG" --add \
  --allow-principal "User:$OPERATOR_USER" \
  --operation Read --operation Describe \
  --topic device.profile.updates.dlq \
  --topic hawkeye.customer.cache.reply

# replay-dlq's group.
kafka-acls --bootstrap-server "$KAFKA_BOOTSTRAP" --command-config "$KAFKA_ADMIN_CONFIG" --add \
  --allow-principal "User:$OPERATOR_USER" \
  --operation Read --operation Describe \
  --group "$KAFKA_GROUP_ID.replay-dlq"

# `get` reads its reply without joining a group, but librdkafka still looks up the coordinator of
# the group id it names, hawkeye-customer-cache-get-<uuid>: Describe on that prefix.
kafka-acls --bootstrap-server "$KAFKA_BOOTSTRAP" --command-config "$KAFKA_ADMIN_CONFIG" --add \
  --allow-principal "User:$OPERATOR_USER" \
  --operation Describe \
  --resource-pattern-type prefixed --group hawkeye-customer-cache-get-
