//! The server process under test: started on a free loopback port, killed
//! and reaped when dropped.

use crate::kind::ServerKind;
use anyhow::{Context, bail};
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
    _dir: TempDir,
}

impl Server {
    /// Starts `exe` as a server of `kind` with `threads` threads on a free
    /// loopback port and waits until it answers.
    pub fn start(kind: ServerKind, exe: &Path, threads: u32) -> anyhow::Result<Server> {
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let dir = TempDir::new()?;
        let mut cmd = Command::new(exe);
        cmd.args(kind.args(port, threads, &dir.0)).stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null());
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
        let mut server = Server { child, addr, _dir: dir };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = server.child.try_wait()? {
                bail!("{} exited at start: {status}", exe.display());
            }
            if kind.ready(addr) {
                return Ok(server);
            }
            if Instant::now() > deadline {
                bail!("{} did not answer on {addr} within 10 s", exe.display());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
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
