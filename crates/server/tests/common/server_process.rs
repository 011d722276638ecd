//! The real `hotpatch-server` binary as a child process: started on 127.0.0.1:0,
//! its address and first-start admin token read from its log, killed and reaped
//! on drop (also when the test panics).

use std::ffi::OsStr;
use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

pub const SERVER_BIN: &str = env!("CARGO_BIN_EXE_hotpatch-server");

/// Watchdog for a start or an exit; generous for a busy shared machine, not an assertion on speed.
const DEADLINE: Duration = Duration::from_secs(120);

fn server_command<I, S>(args: I) -> Command
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let mut cmd = Command::new(SERVER_BIN);
    cmd.args(args).env("RUST_LOG", "warn,hotpatch_server=info").stdin(Stdio::null()).stdout(Stdio::null());
    cmd
}

pub struct ServerProcess {
    child: Child,
    /// `127.0.0.1:PORT`
    pub addr: String,
    /// The admin token the server printed at its first start.
    pub admin: String,
    log: Arc<Mutex<Vec<String>>>,
    reader: Option<JoinHandle<()>>,
}

impl ServerProcess {
    /// Starts the server with `args` (which must give `--listen 127.0.0.1:0` and an
    /// empty database) and waits until it listens.
    pub fn start<I, S>(args: I) -> ServerProcess
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        Self::start_command(server_command(args))
    }

    /// As `start`, with at most `nofile` open files (`prlimit`, util-linux).
    pub fn start_with_open_files<I, S>(nofile: u32, args: I) -> ServerProcess
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut cmd = Command::new("prlimit");
        cmd.arg(format!("--nofile={nofile}:{nofile}")).arg(SERVER_BIN).args(args);
        cmd.env("RUST_LOG", "warn,hotpatch_server=info").stdin(Stdio::null()).stdout(Stdio::null());
        Self::start_command(cmd)
    }

    fn start_command(mut command: Command) -> ServerProcess {
        let mut child = command.stderr(Stdio::piped()).spawn().expect("start hotpatch-server");
        let stderr = child.stderr.take().expect("server stderr");
        let log = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = mpsc::channel::<String>();
        let sink = Arc::clone(&log);
        // Drains the log for the server's whole life so it never blocks on a full pipe.
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                sink.lock().expect("log lock").push(line.clone());
                let _ = tx.send(line);
            }
        });
        let mut server = ServerProcess { child, addr: String::new(), admin: String::new(), log, reader: Some(reader) };
        let deadline = Instant::now() + DEADLINE;
        while server.addr.is_empty() || server.admin.is_empty() {
            let wait = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(wait) {
                Ok(line) => {
                    let trimmed = line.trim();
                    if trimmed.starts_with("hpu_") {
                        server.admin = trimmed.to_string();
                    }
                    if let Some((_, rest)) =
                        line.split_once("addr=").filter(|_| line.contains("hotpatch-server listening"))
                    {
                        server.addr = rest.split_whitespace().next().unwrap_or_default().to_string();
                    }
                }
                Err(RecvTimeoutError::Disconnected) => {
                    let status = server.child.wait().ok();
                    panic!("hotpatch-server exited ({status:?}) before listening:\n{}", server.log_text());
                }
                Err(RecvTimeoutError::Timeout) => {
                    panic!("hotpatch-server did not listen within {DEADLINE:?}:\n{}", server.log_text())
                }
            }
        }
        server
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// True while the process runs (it has not exited or crashed).
    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Everything the server logged so far.
    pub fn log_text(&self) -> String {
        self.log.lock().map(|l| l.join("\n")).unwrap_or_default()
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
    }
}

/// Runs the server with `args` until it exits by itself; returns its status and log.
/// Panics (after killing it) when it is still running at the deadline.
pub fn run_to_exit<I, S>(args: I) -> (ExitStatus, String)
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let mut child = server_command(args).stderr(Stdio::piped()).spawn().expect("start hotpatch-server");
    let mut stderr = child.stderr.take().expect("server stderr");
    let reader = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text);
        text
    });
    let deadline = Instant::now() + DEADLINE;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(50)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("hotpatch-server was expected to exit but still ran after {DEADLINE:?}");
            }
        }
    };
    (status, reader.join().unwrap_or_default())
}
