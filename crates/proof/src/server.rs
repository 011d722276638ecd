//! The server process under test: started on a free loopback port, killed
//! and reaped when dropped (with the worker processes it forked, if any).

use crate::kind::ServerKind;
use anyhow::{Context, bail};
use std::ffi::OsString;
use std::net::{SocketAddr, TcpListener};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// The server, killed and reaped when dropped (and killed by the kernel if
/// this process dies first).
pub struct Server {
    child: Child,
    pub addr: SocketAddr,
    /// The processes it forked by the time it was ready (nginx's workers).
    workers: Vec<i32>,
    _dir: TempDir,
}

impl Server {
    /// Starts `exe` as a server of `kind` with `threads` threads on a free
    /// loopback port, with `env` added to its environment, and waits until it
    /// answers with all its processes.
    pub fn start(kind: ServerKind, exe: &Path, threads: u32, env: &[(OsString, OsString)]) -> anyhow::Result<Server> {
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let dir = TempDir::new()?;
        let mut cmd = Command::new(exe);
        let args = kind.args(port, threads, &dir.0).with_context(|| format!("cannot prepare {}", dir.0.display()))?;
        cmd.args(args)
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        // SAFETY: prctl is async-signal-safe; nothing else runs in the child before exec.
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd.spawn().with_context(|| format!("cannot start {}", exe.display()))?;
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let mut server = Server { child, addr, workers: Vec::new(), _dir: dir };
        let processes = kind.processes(threads);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = server.child.try_wait()? {
                bail!("{} exited at start: {status}", exe.display());
            }
            server.workers = children(server.pid());
            if kind.ready(addr) && server.pids().len() == processes {
                return Ok(server);
            }
            if Instant::now() > deadline {
                bail!(
                    "{} did not answer on {addr} with {processes} process(es) within 10 s (has {})",
                    exe.display(),
                    server.pids().len()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// The server's processes: the one started, then the ones it had forked
    /// when it was ready (nginx's workers; not a child forked since, such as
    /// the fork fault's short-lived ones).
    pub fn pids(&self) -> Vec<i32> {
        let mut pids = vec![self.pid()];
        pids.extend(&self.workers);
        pids
    }

    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // The workers get SIGKILL too: an nginx worker outlives a killed
        // master until it notices (and a forked helper would not at all).
        let mut forked = children(self.pid());
        forked.extend(&self.workers);
        let _ = self.child.kill();
        for pid in forked {
            // SAFETY: plain kill(2); the pid was our child's child a moment ago
            // and, not reaped by anyone but init after the master died, cannot
            // yet be reused.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        let _ = self.child.wait();
    }
}

/// The processes whose parent is `pid`, from /proc/PID/stat (field 4).
fn children(pid: i32) -> Vec<i32> {
    let Ok(dir) = std::fs::read_dir("/proc") else { return Vec::new() };
    let mut kids: Vec<i32> = dir
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&p| parent_of(p) == Some(pid))
        .collect();
    kids.sort_unstable();
    kids
}

fn parent_of(pid: i32) -> Option<i32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses: fields
    // after it are counted from its last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(1)?.parse().ok()
}

struct TempDir(PathBuf);

impl TempDir {
    fn new() -> std::io::Result<TempDir> {
        static N: AtomicU64 = AtomicU64::new(0);
        let dir = std::env::temp_dir().join(format!(
            "hotpatch-proof.{}.{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir)?;
        Ok(TempDir(dir))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
