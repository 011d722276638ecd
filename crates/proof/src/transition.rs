//! One `hotpatch --json apply` or `rollback` command against one process,
//! timed, with the figures of its JSON answer; and the same against every
//! process of a server, a few commands at a time.

use crate::Args;
use serde::Serialize;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[derive(Clone, Copy, PartialEq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Apply,
    Rollback,
}

#[derive(Serialize, Clone)]
pub struct Transition {
    pub generation: u32,
    pub pid: i32,
    pub kind: Kind,
    pub ok: bool,
    /// From `--json`; 0 when the command failed.
    pub pause_us: u64,
    pub threads: u64,
    pub retries: u64,
    /// The engine's own wall time (`total_ms`).
    pub engine_ms: u64,
    /// The `hotpatch` command's wall time, process start to exit.
    pub command_ms: f64,
    pub sigstop: bool,
    pub error: Option<String>,
    #[serde(skip)]
    pub start: Duration,
    #[serde(skip)]
    pub end: Duration,
}

pub fn transition(args: &Args, kind: Kind, pid: i32, generation: u32, origin: Instant) -> Transition {
    let mut cmd = Command::new(&args.hotpatch);
    cmd.arg("--json");
    match kind {
        Kind::Apply => {
            cmd.arg("apply").arg("--pid").arg(pid.to_string()).arg(&args.package).arg("--trust").arg(&args.trust)
        }
        Kind::Rollback => cmd.arg("rollback").arg("--pid").arg(pid.to_string()),
    };
    let t0 = Instant::now();
    let out = cmd.stdin(Stdio::null()).output();
    let t1 = Instant::now();
    let mut t = Transition {
        generation,
        pid,
        kind,
        ok: false,
        pause_us: 0,
        threads: 0,
        retries: 0,
        engine_ms: 0,
        command_ms: (t1 - t0).as_secs_f64() * 1e3,
        sigstop: false,
        error: None,
        start: t0 - origin,
        end: t1 - origin,
    };
    match out {
        Err(e) => t.error = Some(format!("cannot run {}: {e}", args.hotpatch.display())),
        Ok(out) if !out.status.success() => t.error = Some(format!("{}: {}", out.status, command_error(&out))),
        Ok(out) => match serde_json::from_slice::<serde_json::Value>(&out.stdout) {
            Err(e) => t.error = Some(format!("--json output: {e}")),
            Ok(v) => {
                let n = |k: &str| v.get(k).and_then(|x| x.as_u64()).unwrap_or(0);
                t.ok = true;
                t.pause_us = n("pause_us");
                t.threads = n("threads");
                t.retries = n("retries");
                t.engine_ms = n("total_ms");
            }
        },
    }
    t
}

/// Why a `hotpatch --json` command failed: the `error` of its JSON answer,
/// else whatever it wrote to stderr.
fn command_error(out: &std::process::Output) -> String {
    serde_json::from_slice::<serde_json::Value>(&out.stdout)
        .ok()
        .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_owned))
        .unwrap_or_else(|| String::from_utf8_lossy(&out.stderr).trim().to_owned())
}

/// `kind` in every process of `pids`, `args.parallel` commands at a time
/// (each process is its own transition: the engine stops one process's
/// threads at a time, so the processes switch one after the other).
pub fn in_every_process(args: &Args, kind: Kind, pids: &[i32], generation: u32, origin: Instant) -> Vec<Transition> {
    let lanes = (args.parallel as usize).clamp(1, pids.len().max(1));
    std::thread::scope(|s| {
        let lanes: Vec<_> = (0..lanes)
            .map(|lane| {
                s.spawn(move || {
                    pids.iter()
                        .skip(lane)
                        .step_by(lanes)
                        .map(|&pid| transition(args, kind, pid, generation, origin))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        lanes.into_iter().flat_map(|h| h.join().expect("a transition lane panicked")).collect()
    })
}
