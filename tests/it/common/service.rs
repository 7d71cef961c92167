//! The service binary as a child process, configured for one test's own topics and keys.

use std::collections::HashMap;
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;

use super::{stack, unique};

pub const BINARY: &str = env!("CARGO_BIN_EXE_hawkeye-customer-cache");

/// The environment of one isolated service instance: its own topics, group, Redis prefixes,
/// HTTP port (`hawkeye_devtools::service::isolated_env`, as the benchmark), with the tests' own
/// keyspace and info logs. Tests change entries before `start`.
pub fn isolated_env() -> HashMap<String, String> {
    let mut env = hawkeye_devtools::service::isolated_env(&stack(), &unique("t"));
    env.insert("CASSANDRA_KEYSPACE".into(), "hcc_test".into());
    env.insert("RUST_LOG".into(), "info".into());
    env
}

/// A running service. Its stderr is collected line by line; dropping it kills the process.
pub struct ServiceProcess {
    child: Child,
    pub env: HashMap<String, String>,
    stderr: mpsc::UnboundedReceiver<String>,
    pub log: Vec<String>,
}

impl ServiceProcess {
    pub fn start(env: HashMap<String, String>) -> Self {
        let mut child = Command::new(BINARY)
            .arg("run")
            .env_clear()
            .envs(&env)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("cannot start the service binary");
        let (lines_out, stderr) = mpsc::unbounded_channel();
        let pipe = child.stderr.take().expect("stderr is piped");
        tokio::spawn(async move {
            let mut lines = BufReader::new(pipe).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                if lines_out.send(line).is_err() {
                    break;
                }
            }
        });
        ServiceProcess {
            child,
            env,
            stderr,
            log: Vec::new(),
        }
    }

    pub fn http_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.env["HTTP_ADDR"])
    }

    /// Waits until `/ready` answers 200, or panics (and the drop prints the service's log).
    pub async fn wait_ready(&mut self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        let client = reqwest::Client::new();
        loop {
            if let Ok(response) = client.get(self.http_url("/ready")).send().await {
                if response.status().is_success() {
                    return;
                }
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("service exited with {status} before ready");
            }
            assert!(
                Instant::now() <= deadline,
                "service not ready after {timeout:?}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Sends SIGTERM and waits for the exit code.
    pub async fn terminate(&mut self) -> std::process::ExitStatus {
        if let Some(pid) = self.child.id() {
            let sent = Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status()
                .await
                .expect("cannot run kill");
            assert!(sent.success(), "kill -TERM {pid} failed");
        }
        let status = tokio::time::timeout(Duration::from_secs(60), self.child.wait())
            .await
            .expect("service did not stop within 60 s of SIGTERM")
            .expect("wait on the service");
        self.drain_log_until_closed().await;
        status
    }

    /// Moves the stderr lines received so far into `log`.
    pub fn drain_log(&mut self) {
        while let Ok(line) = self.stderr.try_recv() {
            self.log.push(line);
        }
    }

    async fn drain_log_until_closed(&mut self) {
        while let Ok(Some(line)) =
            tokio::time::timeout(Duration::from_secs(5), self.stderr.recv()).await
        {
            self.log.push(line);
        }
    }
}

/// A test that fails with the service still running shows the end of the service's log, which
/// is what tells a stall from a loss.
impl Drop for ServiceProcess {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.drain_log();
            let tail = self.log.len().saturating_sub(LOG_TAIL_ON_FAILURE);
            eprintln!("service log (last {} lines):", self.log.len() - tail);
            for line in &self.log[tail..] {
                eprintln!("{line}");
            }
        }
    }
}

/// Lines of the service's log a failing test prints.
const LOG_TAIL_ON_FAILURE: usize = 300;

/// Runs the binary to completion with `env` and returns its exit code and stderr lines.
pub async fn run_to_exit(env: &HashMap<String, String>, timeout: Duration) -> (i32, Vec<String>) {
    let output = tokio::time::timeout(
        timeout,
        Command::new(BINARY)
            .arg("run")
            .env_clear()
            .envs(env)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("the service did not exit in time")
    .expect("cannot run the service binary");
    let stderr = String::from_utf8_lossy(&output.stderr)
        .lines()
        .map(str::to_string)
        .collect();
    (output.status.code().unwrap_or(-1), stderr)
}

/// Runs `hawkeye-customer-cache {args}` to completion with `env`; returns its exit code,
/// stdout and stderr.
pub async fn run_command(
    args: &[&str],
    env: &HashMap<String, String>,
    timeout: Duration,
) -> (i32, String, String) {
    let output = tokio::time::timeout(
        timeout,
        Command::new(BINARY)
            .args(args)
            .env_clear()
            .envs(env)
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .unwrap_or_else(|_| panic!("{args:?} did not exit within {timeout:?}"))
    .expect("cannot run the service binary");
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}
