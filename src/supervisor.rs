//! The one owner of the service's long-running tasks. They all run until shutdown; one that
//! ends before (an error it could not handle, a panic) would leave the process up with part of
//! its work silently gone, so the supervisor then logs it, cancels the others, lets them drain,
//! and reports the failure: `run` exits non-zero and an orchestrator restarts the service.

use std::collections::HashMap;
use std::future::Future;

use tokio::task::{Id, JoinError, JoinSet};
use tokio_util::sync::CancellationToken;

pub struct Supervisor {
    tasks: JoinSet<()>,
    names: HashMap<Id, &'static str>,
    shutdown: CancellationToken,
}

impl Supervisor {
    /// Tasks watch `shutdown` to stop; the supervisor cancels it when one ends early.
    pub fn new(shutdown: CancellationToken) -> Self {
        Supervisor {
            tasks: JoinSet::new(),
            names: HashMap::new(),
            shutdown,
        }
    }

    pub fn spawn(&mut self, name: &'static str, task: impl Future<Output = ()> + Send + 'static) {
        let handle = self.tasks.spawn(task);
        self.names.insert(handle.id(), name);
    }

    /// Waits for shutdown, or for a task to end first; then waits until every task has
    /// drained. `Err` names the task that ended before shutdown.
    pub async fn wait(mut self) -> anyhow::Result<()> {
        let early = tokio::select! {
            biased;
            () = self.shutdown.cancelled() => None,
            Some(ended) = self.tasks.join_next_with_id() => {
                // Tasks end soon after shutdown: one that ended after it was asked to is not early.
                (!self.shutdown.is_cancelled()).then(|| self.describe(ended))
            }
        };
        if let Some(reason) = &early {
            tracing::error!(
                reason = %reason,
                "a task of the service stopped unexpectedly; stopping the others"
            );
            self.shutdown.cancel();
        }
        while let Some(ended) = self.tasks.join_next_with_id().await {
            if let Err(e) = &ended {
                if e.is_panic() {
                    tracing::error!(reason = %self.describe(ended), "a task panicked while stopping");
                }
            }
        }
        match early {
            Some(reason) => Err(anyhow::anyhow!("{reason}")),
            None => Ok(()),
        }
    }

    fn describe(&self, ended: Result<(Id, ()), JoinError>) -> String {
        let (id, how) = match ended {
            Ok((id, ())) => (id, "ended before shutdown".to_string()),
            Err(e) if e.is_panic() => (e.id(), format!("panicked: {}", panic_text(e))),
            Err(e) => (e.id(), format!("was cancelled: {e}")),
        };
        let name = self.names.get(&id).copied().unwrap_or("unnamed");
        format!("task {name} {how}")
    }
}

fn panic_text(error: JoinError) -> String {
    let payload = error.into_panic();
    payload
        .downcast_ref::<&str>()
        .map(|text| text.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(no message)".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    use std::time::Duration;

    /// A task that runs until shutdown, then takes a moment to drain and records that it did.
    fn draining(
        shutdown: &CancellationToken,
        drained: &Arc<AtomicBool>,
    ) -> impl Future<Output = ()> {
        let (shutdown, drained) = (shutdown.clone(), drained.clone());
        async move {
            shutdown.cancelled().await;
            tokio::time::sleep(Duration::from_millis(20)).await;
            drained.store(true, Ordering::SeqCst);
        }
    }

    #[tokio::test]
    async fn a_panicking_task_stops_the_others_after_they_drain() {
        let shutdown = CancellationToken::new();
        let drained = Arc::new(AtomicBool::new(false));
        let mut supervisor = Supervisor::new(shutdown.clone());
        supervisor.spawn("pipeline", draining(&shutdown, &drained));
        supervisor.spawn("refresh", async { panic!("boom") });
        let error = supervisor.wait().await.unwrap_err();
        assert_eq!(error.to_string(), "task refresh panicked: boom");
        assert!(shutdown.is_cancelled());
        assert!(
            drained.load(Ordering::SeqCst),
            "the other task drained first"
        );
    }

    #[tokio::test]
    async fn a_task_ending_early_is_a_failure_too() {
        let shutdown = CancellationToken::new();
        let mut supervisor = Supervisor::new(shutdown.clone());
        supervisor.spawn("http", async {});
        supervisor.spawn("requests", {
            let shutdown = shutdown.clone();
            async move { shutdown.cancelled().await }
        });
        let error = supervisor.wait().await.unwrap_err();
        assert_eq!(error.to_string(), "task http ended before shutdown");
    }

    #[tokio::test]
    async fn shutdown_waits_for_every_task_and_succeeds() {
        let shutdown = CancellationToken::new();
        let drained = Arc::new(AtomicBool::new(false));
        let mut supervisor = Supervisor::new(shutdown.clone());
        supervisor.spawn("pipeline", draining(&shutdown, &drained));
        shutdown.cancel();
        supervisor.wait().await.unwrap();
        assert!(drained.load(Ordering::SeqCst));
    }
}
