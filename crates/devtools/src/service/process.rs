//! The service binary as a child process, for the integration tests, the fault suite and the
//! benchmark alike: `run` with exactly the environment given, waited on until ready, `/metrics`
//! scraped, stopped with SIGTERM (killed when dropped), stderr kept line by line; and the
//! binary's other commands run to their exit.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use anyhow::Context;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, ChildStderr, Command};
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::{parse_memory, process_cpu_seconds, Memory};

/// The service binary's file name.
const SERVICE_BINARY: &str = "hawkeye-customer-cache";

/// How long a service may take to exit after SIGTERM before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(60);
/// How often `/ready` is asked while a service starts.
const READY_POLL: Duration = Duration::from_millis(100);
/// Lines of the log an error shows (the whole log is in [`ServiceProcess::log`]).
const LOG_TAIL_IN_ERRORS: usize = 20;
/// Lines of the log a test that panics with the service still running shows.
const LOG_TAIL_ON_PANIC: usize = 300;

/// The service binary cargo builds with the running executable: beside it
/// (`target/<profile>/`), or beside its directory when that is `deps/`, where cargo puts test
/// executables.
pub fn built_binary() -> anyhow::Result<PathBuf> {
    let executable = std::env::current_exe().context("cannot find this executable")?;
    Ok(binary_beside(&executable))
}

/// [`built_binary`] for `executable`.
fn binary_beside(executable: &Path) -> PathBuf {
    let mut dir = executable.parent().unwrap_or(Path::new("."));
    if dir.ends_with("deps") {
        dir = dir.parent().unwrap_or(dir);
    }
    dir.join(SERVICE_BINARY)
}

/// A running `hawkeye-customer-cache run`; killed when dropped.
pub struct ServiceProcess {
    child: Child,
    /// Kept: the child forgets its id once it has been waited for.
    pid: u32,
    /// The environment the service runs with (nothing else of this process's).
    pub env: HashMap<String, String>,
    /// The stderr lines read so far; [`Self::drain_log`] reads on.
    pub log: Vec<String>,
    stderr: mpsc::UnboundedReceiver<String>,
    http: reqwest::Client,
}

impl ServiceProcess {
    /// Starts `binary run` with exactly `env`, which sets `HTTP_ADDR` (see
    /// [`super::isolated_env`]).
    pub fn start(binary: &Path, env: HashMap<String, String>) -> anyhow::Result<Self> {
        let mut child = Command::new(binary)
            .arg("run")
            .env_clear()
            .envs(&env)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("cannot start {}", binary.display()))?;
        let pid = child.id().context("the service exited at once")?;
        let stderr = read_lines(child.stderr.take().context("stderr is piped")?);
        Ok(ServiceProcess {
            child,
            pid,
            env,
            log: Vec::new(),
            stderr,
            http: reqwest::Client::new(),
        })
    }

    /// `http://{HTTP_ADDR}{path}`.
    pub fn http_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.env["HTTP_ADDR"])
    }

    /// Waits until `/ready` answers 200; an error if the service exits first or `timeout`
    /// passes.
    pub async fn wait_ready(&mut self, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        let ready_url = self.http_url("/ready");
        loop {
            if let Ok(response) = self.http.get(&ready_url).send().await {
                if response.status().is_success() {
                    return Ok(());
                }
            }
            if let Some(status) = self.child.try_wait()? {
                self.drain_log_until_closed().await;
                return Err(self.failure(&format!("the service exited with {status} before ready")));
            }
            if Instant::now() > deadline {
                return Err(self.failure(&format!("the service was not ready after {timeout:?}")));
            }
            tokio::time::sleep(READY_POLL).await;
        }
    }

    /// The whole `/metrics` text.
    pub async fn metrics(&self) -> anyhow::Result<String> {
        let response = self
            .http
            .get(self.http_url("/metrics"))
            .send()
            .await
            .and_then(reqwest::Response::error_for_status)
            .context("cannot read /metrics")?;
        response.text().await.context("cannot read /metrics")
    }

    /// The value of one series of `/metrics` (its name, `hawkeye_customer_cache_` prefix
    /// included, and its labels as the service prints them), 0 when absent.
    pub async fn metric(&self, series: &str) -> anyhow::Result<f64> {
        Ok(self
            .metrics()
            .await?
            .lines()
            .find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or(0.0))
    }

    /// VmRSS and VmHWM from `/proc/<pid>/status`.
    pub fn memory(&self) -> anyhow::Result<Memory> {
        let path = format!("/proc/{}/status", self.pid);
        let status =
            std::fs::read_to_string(&path).with_context(|| format!("cannot read {path}"))?;
        Ok(parse_memory(&status))
    }

    /// CPU seconds (user + system) the service has used so far.
    pub fn cpu_seconds(&self) -> anyhow::Result<f64> {
        process_cpu_seconds(self.pid)
    }

    /// Sends SIGTERM (unless the service has exited already) and waits for the exit, then
    /// reads the rest of the log; a service still running after a minute is killed: an error.
    pub async fn terminate(&mut self) -> anyhow::Result<ExitStatus> {
        if self.child.id().is_some() {
            let sent = Command::new("kill")
                .args(["-TERM", &self.pid.to_string()])
                .status()
                .await
                .context("cannot run kill")?;
            anyhow::ensure!(sent.success(), "kill -TERM {} failed", self.pid);
        }
        let Ok(status) = tokio::time::timeout(STOP_TIMEOUT, self.child.wait()).await else {
            self.child.kill().await?;
            return Err(self.failure(&format!(
                "the service did not stop within {STOP_TIMEOUT:?} of SIGTERM"
            )));
        };
        let status = status.context("cannot wait for the service")?;
        self.drain_log_until_closed().await;
        Ok(status)
    }

    /// [`Self::terminate`], and an error unless the service exited 0.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        let status = self.terminate().await?;
        if !status.success() {
            return Err(self.failure(&format!("the service exited with {status}")));
        }
        Ok(())
    }

    /// Moves the stderr lines received so far into `log`.
    pub fn drain_log(&mut self) {
        while let Ok(line) = self.stderr.try_recv() {
            self.log.push(line);
        }
    }

    /// Reads the log until stderr closes (the service has exited), or no line comes for 5 s.
    async fn drain_log_until_closed(&mut self) {
        while let Ok(Some(line)) =
            tokio::time::timeout(Duration::from_secs(5), self.stderr.recv()).await
        {
            self.log.push(line);
        }
    }

    /// The last `lines` lines of the log, read up to now.
    fn log_tail(&mut self, lines: usize) -> &[String] {
        self.drain_log();
        &self.log[self.log.len().saturating_sub(lines)..]
    }

    /// An error saying `what`, with the end of the log: the bench has no other view of it.
    fn failure(&mut self, what: &str) -> anyhow::Error {
        let tail = self.log_tail(LOG_TAIL_IN_ERRORS).join("\n");
        anyhow::anyhow!("{what}; its log ends:\n{tail}")
    }
}

/// A test that fails with the service still running shows the end of the service's log, which
/// is what tells a stall from a loss.
impl Drop for ServiceProcess {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let tail = self.log_tail(LOG_TAIL_ON_PANIC);
            eprintln!("service log (last {} lines):", tail.len());
            for line in tail {
                eprintln!("{line}");
            }
        }
    }
}

/// The lines of `pipe`, read by a task of their own, so that the service never blocks on a
/// full pipe whatever its reader does.
fn read_lines(pipe: ChildStderr) -> mpsc::UnboundedReceiver<String> {
    let (lines_out, lines_in) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut lines = BufReader::new(pipe).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            if lines_out.send(line).is_err() {
                break;
            }
        }
    });
    lines_in
}

/// The exit code and output of a command of the binary run to its exit.
#[derive(Debug)]
pub struct Exit {
    /// -1 when a signal ended it.
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `binary {args}` with exactly `env` to its exit; an error (and the command killed) if
/// that takes over `timeout`.
pub async fn run_command(
    binary: &Path,
    args: &[&str],
    env: &HashMap<String, String>,
    timeout: Duration,
) -> anyhow::Result<Exit> {
    let run = Command::new(binary)
        .args(args)
        .env_clear()
        .envs(env)
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(timeout, run)
        .await
        .map_err(|_| anyhow::anyhow!("{args:?} did not exit within {timeout:?}"))?
        .with_context(|| format!("cannot run {}", binary.display()))?;
    Ok(Exit {
        code: output.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_binary_is_beside_the_bench_and_beside_the_deps_of_a_test() {
        let built = Path::new("/t/debug/hawkeye-customer-cache");
        assert_eq!(binary_beside(Path::new("/t/debug/hawkeye-devtools")), built);
        assert_eq!(binary_beside(Path::new("/t/debug/deps/it-0123abcd")), built);
    }

    #[tokio::test]
    async fn a_service_that_exits_before_ready_is_an_error_that_shows_its_log() {
        // `sh run` looks for a script named `run`, says it cannot find it, and exits.
        let env = HashMap::from([("HTTP_ADDR".to_string(), "127.0.0.1:9".to_string())]);
        let mut service = ServiceProcess::start(Path::new("/bin/sh"), env).unwrap();
        let error = service
            .wait_ready(Duration::from_secs(30))
            .await
            .unwrap_err()
            .to_string();
        assert!(error.contains("before ready"), "{error}");
        assert_eq!(service.log.len(), 1, "{:?}", service.log);
        assert!(service.log[0].contains("run"), "{:?}", service.log);
        assert!(error.ends_with(&service.log[0]), "{error}");
    }
}
