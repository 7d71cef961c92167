# Builds the service binary (`run`, `get`, `refresh`, `profile publish`) and the devtools binary
# (`sim`, for docker-compose's simulator; `bench`) into one image.
FROM rust:1-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY crates ./crates
COPY schemas ./schemas
RUN cargo build --release --locked --workspace --bins

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates libssl3 \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/hawkeye-customer-cache /usr/local/bin/hawkeye-customer-cache
COPY --from=build /src/target/release/hawkeye-devtools /usr/local/bin/hawkeye-devtools
USER nobody
ENTRYPOINT ["hawkeye-customer-cache"]
CMD ["run"]
