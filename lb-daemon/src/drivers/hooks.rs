//! Operators' scripts, run on events (HA's `notify` with MASTER | BACKUP | FAULT, a
//! service's `notify` with UP | DOWN, `recover` steps): each in its own task, so none
//! delays a check or an election; killed at its timeout, with its exit status logged.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use tokio::process::Command;
use tracing::{info, warn};

/// One run of a script.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hook {
    pub program: PathBuf,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    /// Killed when it runs longer.
    pub timeout: Duration,
}

/// How a run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Exited(i32),
    /// Ended by a signal.
    Signalled,
    TimedOut,
    /// It could not be started (missing, not executable).
    NotStarted(String),
}

/// Runs `hook` to its end, or kills it at its timeout.
pub async fn run(hook: &Hook) -> Outcome {
    let mut cmd = Command::new(&hook.program);
    cmd.args(&hook.args)
        .envs(hook.env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true);
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => return Outcome::NotStarted(e.to_string()),
    };
    match tokio::time::timeout(hook.timeout, child.wait()).await {
        Ok(Ok(status)) => status.code().map_or(Outcome::Signalled, Outcome::Exited),
        Ok(Err(e)) => Outcome::NotStarted(e.to_string()),
        Err(_) => {
            let _ = child.kill().await;
            Outcome::TimedOut
        }
    }
}

/// Starts `hook` in the background and logs how it ended.
pub fn spawn(what: &'static str, hook: Hook) {
    tokio::spawn(run_logged(what, hook));
}

/// A task that runs the hooks sent to it one after another, in order: an operator's
/// script sees MASTER then BACKUP in the order they happened, never the other way round.
pub fn in_order(what: &'static str) -> Queue {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Hook>();
    let task = tokio::spawn(async move {
        while let Some(hook) = rx.recv().await {
            run_logged(what, hook).await;
        }
    });
    Queue { tx, task }
}

/// The hooks [`in_order`] runs.
#[derive(Debug)]
pub struct Queue {
    tx: tokio::sync::mpsc::UnboundedSender<Hook>,
    task: tokio::task::JoinHandle<()>,
}

impl Queue {
    /// Runs `hook` after those sent before it.
    pub fn send(&self, hook: Hook) {
        // The task ends only when this queue is dropped or drained.
        let _ = self.tx.send(hook);
    }

    /// Waits, at most `within`, for every run queued so far to end; whether they did.
    /// What lbd does on its way out, so the last transition's script (INIT) is not
    /// killed with it.
    pub async fn drain(self, within: Duration) -> bool {
        drop(self.tx);
        tokio::time::timeout(within, self.task).await.is_ok()
    }
}

/// Runs `hook` and logs how it ended.
pub async fn run_logged(what: &'static str, hook: Hook) {
    let outcome = run(&hook).await;
    let program = hook.program.display().to_string();
    match outcome {
        Outcome::Exited(0) => info!(hook = what, %program, args = ?hook.args, "hook ran"),
        other => warn!(hook = what, %program, args = ?hook.args, outcome = ?other, "hook failed"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(script: &str, timeout: Duration) -> Hook {
        Hook {
            program: "/bin/sh".into(),
            args: vec!["-c".into(), script.into(), "hook".into(), "MASTER".into()],
            env: vec![("LBD_TEST".into(), "7".into())],
            timeout,
        }
    }

    #[tokio::test]
    async fn a_hook_gets_its_arguments_and_environment_and_its_status_is_kept() {
        let ok = sh(r#"[ "$1" = MASTER ] && [ "$LBD_TEST" = 7 ]"#, Duration::from_secs(10));
        assert_eq!(run(&ok).await, Outcome::Exited(0));
        assert_eq!(run(&sh("exit 3", Duration::from_secs(10))).await, Outcome::Exited(3));
    }

    #[tokio::test]
    async fn a_hook_that_hangs_is_killed_at_its_timeout() {
        let started = std::time::Instant::now();
        assert_eq!(run(&sh("sleep 30", Duration::from_millis(200))).await, Outcome::TimedOut);
        assert!(started.elapsed() < Duration::from_secs(20));
    }

    #[tokio::test]
    async fn a_missing_program_is_said_not_started() {
        let hook = Hook { program: "/nonexistent/notify".into(), ..sh("", Duration::from_secs(1)) };
        assert!(matches!(run(&hook).await, Outcome::NotStarted(_)));
    }

    #[tokio::test]
    async fn hooks_in_order_run_one_after_another() {
        let file = std::env::temp_dir().join(format!("lbd-hooks-{}", std::process::id()));
        let _ = std::fs::remove_file(&file);
        let append = |what: &str, delay: &str| {
            let script = format!("sleep {delay}; echo {what} >> {}", file.display());
            Hook { args: vec!["-c".into(), script], ..sh("", Duration::from_secs(10)) }
        };
        let queue = in_order("test");
        // The first is slower than the second: run at once, they would finish reversed.
        queue.send(append("MASTER", "0.3"));
        queue.send(append("BACKUP", "0"));
        // Drained: both ran, in order, before it returns (as lbd drains it on its way out).
        assert!(queue.drain(Duration::from_secs(10)).await);
        assert_eq!(std::fs::read_to_string(&file).unwrap_or_default(), "MASTER\nBACKUP\n");
        let _ = std::fs::remove_file(&file);
    }
}
