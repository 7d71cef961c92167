//! A `scripts/stack` directory of a test's own, beside the shared stack: the servers a test
//! starts in it (on ports it picks) disturb no other test, and are removed (`scripts/stack
//! down`) on drop.

use std::path::PathBuf;
use std::process::Command;

use hawkeye_devtools::testkit::unique;

pub struct OwnStack {
    dir: PathBuf,
}

impl OwnStack {
    /// A new, empty stack directory named after `what`.
    pub fn new(what: &str) -> Self {
        OwnStack {
            dir: PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(unique(what)),
        }
    }

    /// `scripts/stack ARGS` on this directory, without the `STACK_*` settings of the shared
    /// stack the test runs beside (its ports would not match this stack's).
    pub fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/stack"));
        for (name, _) in std::env::vars_os() {
            if name.to_string_lossy().starts_with("STACK_") {
                command.env_remove(name);
            }
        }
        command.args(args).env("STACK_DIR", &self.dir);
        command
    }

    /// Runs `command` (`what` names it in the panic if it fails) and returns what it printed.
    pub fn run(&self, mut command: Command, what: &str) -> String {
        let output = command.output().expect("cannot run scripts/stack");
        assert!(
            output.status.success(),
            "scripts/stack {what} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).to_string()
    }
}

impl Drop for OwnStack {
    fn drop(&mut self) {
        // A panic here would abort the test run: report instead.
        match self.command(&["down"]).output() {
            Ok(output) if output.status.success() => {
                let _ = std::fs::remove_dir_all(&self.dir);
            }
            Ok(output) => eprintln!(
                "scripts/stack down of {} failed: {}",
                self.dir.display(),
                String::from_utf8_lossy(&output.stderr)
            ),
            Err(e) => eprintln!("cannot run scripts/stack down: {e}"),
        }
    }
}
