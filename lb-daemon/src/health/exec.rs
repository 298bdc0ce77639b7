//! Exec check, as keepalived's MISC_CHECK: the command (by `/bin/sh -c`) exits 0 for up;
//! an integer on its stdout is the real's weight from then on (keepalived's
//! `misc_dynamic`). It runs with LBD_SERVICE, LBD_VIP and LBD_REAL (ADDRESS:PORT) in its
//! environment, and is killed when the check's timeout ends it.

use std::process::Stdio;

use tokio::io::AsyncReadExt as _;
use tokio::process::Command;

use crate::config::ExecCheck;
use crate::core::CheckTarget;

/// stdout is read up to this size: a weight is a few digits.
const MAX_OUTPUT: u64 = 4096;

/// Up or down with its detail, and the weight the command printed, if it did.
pub async fn check(
    target: &CheckTarget,
    spec: &ExecCheck,
) -> (Result<String, String>, Option<u32>) {
    let mut child = match Command::new("/bin/sh")
        .arg("-c")
        .arg(&spec.command)
        .env("LBD_SERVICE", &target.service)
        .env("LBD_VIP", target.vip.to_string())
        .env("LBD_REAL", target.addr.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        // The check's timeout drops this future: the command goes with it.
        .kill_on_drop(true)
        .spawn()
    {
        Ok(c) => c,
        Err(e) => return (Err(format!("cannot run {:?}: {e}", spec.command)), None),
    };
    let mut out = Vec::new();
    if let Some(stdout) = child.stdout.take() {
        let _ = stdout.take(MAX_OUTPUT).read_to_end(&mut out).await;
    }
    let status = match child.wait().await {
        Ok(s) => s,
        Err(e) => return (Err(format!("waiting for {:?}: {e}", spec.command)), None),
    };
    judge(status.code(), &out)
}

/// An exit code (None: killed by a signal) and the output, judged.
pub fn judge(code: Option<i32>, stdout: &[u8]) -> (Result<String, String>, Option<u32>) {
    match code {
        Some(0) => {
            let weight =
                String::from_utf8_lossy(stdout).trim().parse::<u32>().ok().filter(|w| *w <= 65535);
            let detail = match weight {
                Some(w) => format!("exit 0, weight {w}"),
                None => "exit 0".into(),
            };
            (Ok(detail), weight)
        }
        Some(code) => (Err(format!("exit {code}")), None),
        None => (Err("killed by a signal".into()), None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_0_is_up_and_an_integer_on_stdout_is_the_weight() {
        assert_eq!(judge(Some(0), b"25\n"), (Ok("exit 0, weight 25".into()), Some(25)));
        assert_eq!(judge(Some(0), b"ok\n"), (Ok("exit 0".into()), None));
        assert_eq!(judge(Some(0), b"70000"), (Ok("exit 0".into()), None), "beyond ipvsadm's range");
        assert_eq!(judge(Some(2), b"25"), (Err("exit 2".into()), None));
        assert_eq!(judge(None, b""), (Err("killed by a signal".into()), None));
    }
}
