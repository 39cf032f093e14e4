//! Extraction in a child process: the server runs `carmenta extract --format F`
//! (or the program `CARMENTA_EXTRACTOR` names) with the file on stdin, under a
//! data-size limit (`RLIMIT_DATA`, 1 GiB), a CPU-time limit and a wall-clock
//! timeout (the child is killed when it runs out). The child answers one JSON
//! line: `{"ok": Extracted}` or `{"error": ExtractError}`. A crash or a kill is
//! reported as `extractor_failed` / `timeout`, never as a server crash.

use std::io::{Read, Write};
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::{ExtractError, Extracted, Format, Limits};

/// Memory the child may allocate.
const DATA_LIMIT: u64 = 1 << 30;

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Answer {
    Ok(Extracted),
    Error(ExtractError),
}

/// The child's side: reads the file from stdin, extracts, prints the answer.
/// Returns the process exit code (0 whenever an answer was written).
pub fn child_main(format: &str, limits: Limits) -> i32 {
    let mut bytes = Vec::new();
    if std::io::stdin().read_to_end(&mut bytes).is_err() {
        return 3;
    }
    let answer = match Format::from_name(format) {
        None => Answer::Error(ExtractError::new("unsupported_format", format!("unknown format {format:?}"))),
        Some(f) => match std::panic::catch_unwind(|| super::extract(f, &bytes, &limits)) {
            Ok(Ok(e)) => Answer::Ok(e),
            Ok(Err(e)) => Answer::Error(e),
            Err(_) => Answer::Error(ExtractError::new("extractor_failed", "the extractor failed on this file")),
        },
    };
    let mut out = std::io::stdout().lock();
    match serde_json::to_writer(&mut out, &answer) {
        Ok(()) => {
            let _ = out.write_all(b"\n");
            let _ = out.flush();
            0
        }
        Err(_) => 3,
    }
}

/// Runs `program extract …` on `bytes` with the limits and `timeout`.
pub async fn extract(
    program: &Path,
    format: Format,
    bytes: Vec<u8>,
    limits: Limits,
    timeout: Duration,
) -> Result<Extracted, ExtractError> {
    let cpu = timeout.as_secs().max(1) + 1;
    let mut cmd = tokio::process::Command::new(program);
    cmd.arg("extract")
        .arg("--format")
        .arg(format.as_str())
        .arg("--max-pages")
        .arg(limits.max_pages.to_string())
        .arg("--max-text-bytes")
        .arg(limits.max_text_bytes.to_string())
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true);
    // SAFETY: only async-signal-safe calls (setrlimit) between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            let set = |res, v: u64| {
                let lim = libc::rlimit { rlim_cur: v, rlim_max: v };
                if libc::setrlimit(res, &lim) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            };
            set(libc::RLIMIT_DATA, DATA_LIMIT)?;
            set(libc::RLIMIT_CPU, cpu)?;
            set(libc::RLIMIT_CORE, 0)?;
            Ok(())
        });
    }
    let failed = |m: String| ExtractError::new("extractor_failed", m);
    let mut child = cmd.spawn().map_err(|e| failed(format!("could not start the extractor: {e}")))?;
    let mut stdin = child.stdin.take().ok_or_else(|| failed("no stdin".into()))?;
    let mut stdout = child.stdout.take().ok_or_else(|| failed("no stdout".into()))?;
    let work = async move {
        let writer = tokio::spawn(async move {
            // The child may stop reading (it failed early): that is not our error.
            let _ = stdin.write_all(&bytes).await;
            drop(stdin);
        });
        let mut out = Vec::new();
        let read = stdout.read_to_end(&mut out).await;
        let status = child.wait().await;
        let _ = writer.await;
        (read, status, out)
    };
    let (read, status, out) = match tokio::time::timeout(timeout, work).await {
        Ok(r) => r,
        Err(_) => {
            return Err(ExtractError::new(
                "timeout",
                format!("extraction took longer than {} s and was stopped", timeout.as_secs()),
            ));
        }
    };
    read.map_err(|e| failed(format!("reading the extractor: {e}")))?;
    let status = status.map_err(|e| failed(format!("waiting for the extractor: {e}")))?;
    match serde_json::from_slice::<Answer>(&out) {
        Ok(Answer::Ok(e)) => Ok(e),
        Ok(Answer::Error(e)) => Err(e),
        Err(_) => {
            use std::os::unix::process::ExitStatusExt;
            Err(match status.signal() {
                Some(libc::SIGXCPU) | Some(libc::SIGKILL) => ExtractError::new(
                    "timeout",
                    "extraction used more CPU time than allowed and was stopped".to_string(),
                ),
                Some(sig) => failed(format!("the extractor crashed on this file (signal {sig})")),
                None => failed(format!(
                    "the extractor ended without an answer (exit {}; out of memory?)",
                    status.code().unwrap_or(-1)
                )),
            })
        }
    }
}
