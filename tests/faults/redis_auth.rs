//! Security: an authenticated store. A redis-server of the test's own, with `requirepass`, on
//! a free loopback port: the service pushes profiles into it with the password in
//! `REDIS_URL`, and a wrong password stops start-up with one line that does not show it.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use hawkeye_devtools::service::free_port;
use hawkeye_devtools::testkit::service::isolated_env;
use redis::AsyncCommands;

use crate::harness::{refused_start_up, start_and_push_one};

/// A redis-server with a password, killed on drop.
pub struct PasswordRedis {
    child: std::process::Child,
    pub port: u16,
    pub password: String,
}

impl PasswordRedis {
    pub async fn start(password: &str) -> Self {
        let port = free_port();
        let child = std::process::Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--requirepass",
                password,
            ])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("cannot start redis-server (Debian package redis-server)");
        let redis = PasswordRedis {
            child,
            port,
            password: password.to_string(),
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while redis.connection().await.is_err() {
            assert!(
                Instant::now() < deadline,
                "redis-server on {port} did not answer"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        redis
    }

    pub fn url_with(&self, password: &str) -> String {
        format!("redis://:{password}@127.0.0.1:{}/0", self.port)
    }

    pub fn url(&self) -> String {
        self.url_with(&self.password)
    }

    pub async fn connection(&self) -> redis::RedisResult<redis::aio::MultiplexedConnection> {
        let client = redis::Client::open(self.url())?;
        let mut connection = client.get_multiplexed_async_connection().await?;
        redis::cmd("PING")
            .query_async::<String>(&mut connection)
            .await?;
        Ok(connection)
    }
}

impl Drop for PasswordRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
#[ignore = "fault suite: run serially by scripts/test (cargo test --test faults -- --ignored)"]
async fn profiles_land_in_a_password_protected_redis_and_a_wrong_password_stops_start_up() {
    let redis = PasswordRedis::start("Redis-Pa55-For-Auth-Test").await;
    let mut env = isolated_env();
    env.insert("REDIS_URL".into(), redis.url());
    let (mut service, device) = start_and_push_one(&env).await;
    let key = format!("{}{device}", env["REDIS_DEVICE_KEY_PREFIX"]);
    let mut connection = redis.connection().await.expect("authenticated connection");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let hash: HashMap<String, String> = connection.hgetall(&key).await.expect("HGETALL");
        if hash.get("city").map(String::as_str) == Some("Secure") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the profile never reached the protected Redis"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(service.terminate().await.unwrap().success());

    let wrong = "Wrong-Pa55-Never-Shown";
    env.insert("REDIS_URL".into(), redis.url_with(wrong));
    refused_start_up(&env, "REDIS_URL", &[wrong, &redis.password]).await;
}
