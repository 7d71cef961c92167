# Builds the service binary; the same image runs `run`, `sim`, `get`, `refresh`.
FROM rust:1-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY schemas ./schemas
RUN cargo build --release --locked --bin hawkeye-customer-cache

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates libssl3 \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/hawkeye-customer-cache /usr/local/bin/hawkeye-customer-cache
USER nobody
ENTRYPOINT ["hawkeye-customer-cache"]
CMD ["run"]
