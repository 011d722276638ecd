//! Faults during transitions (`--fault`), each running for a whole server
//! process's life so that every transition meets it:
//! - `threads`, `fork-exec`: a helper library (helper/fault.c, built with
//!   `cc` at the start of the run) is preloaded into the server; its thread
//!   creates and joins a thread, or forks a child that execs /bin/true, in a
//!   tight loop, in every process of the server;
//! - `memory`: the server's processes are put into a memory cgroup (v1)
//!   limited to what they use plus `HOG_ROOM`, with a hog in it that fills
//!   the rest until the kernel kills it (it asks to be the first choice),
//!   again and again, so the server's file pages (its code) are reclaimed
//!   while it is patched.
//!
//! The target's own SIGSTOP/SIGCONT is `--sigstop-every`.

use anyhow::{Context, bail};
use serde::Serialize;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

const HELPER_C: &str = include_str!("../helper/fault.c");
const CGROUP_MEMORY: &str = "/sys/fs/cgroup/memory";
/// What the hog may take above the server's own use.
const HOG_ROOM: u64 = 64 << 20;

#[derive(Clone, Copy, PartialEq, Eq, Debug, Default, clap::ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Fault {
    #[default]
    None,
    /// A thread created and joined in a tight loop in every server process.
    Threads,
    /// A fork and an exec of /bin/true in a tight loop in every server process.
    ForkExec,
    /// A memory cgroup limit with a hog beside the server inside it.
    Memory,
}

impl Fault {
    pub fn name(self) -> Option<&'static str> {
        match self {
            Fault::None => None,
            Fault::Threads => Some("threads"),
            Fault::ForkExec => Some("fork-exec"),
            Fault::Memory => Some("memory"),
        }
    }
}

/// What the faults did, for the report.
#[derive(Serialize, Default, Clone)]
pub struct FaultCounts {
    /// Threads created and joined, or children forked and exec'd, in all
    /// server processes (as last written by the helper; a lower bound).
    pub helper_rounds: u64,
    /// Times the memory cgroup hit its limit (memory.failcnt), summed.
    pub memory_limit_hits: u64,
    /// Times the hog was killed by the kernel for want of memory and restarted.
    pub hog_restarts: u64,
}

/// The preloaded helper, built once per run into `dir`.
pub struct Helper {
    library: PathBuf,
    counts: PathBuf,
}

impl Helper {
    pub fn build(dir: &Path) -> anyhow::Result<Helper> {
        std::fs::create_dir_all(dir)?;
        let source = dir.join("fault.c");
        let library = dir.join("libhotpatch-proof-fault.so");
        std::fs::write(&source, HELPER_C)?;
        let out = Command::new("cc")
            .args(["-O2", "-shared", "-fPIC", "-pthread", "-o"])
            .arg(&library)
            .arg(&source)
            .output()
            .context("cannot run cc to build the fault helper")?;
        if !out.status.success() {
            bail!("cc could not build the fault helper: {}", String::from_utf8_lossy(&out.stderr).trim());
        }
        Ok(Helper { library, counts: dir.join("count") })
    }

    /// The environment that makes a server run `fault`.
    pub fn env(&self, fault: Fault) -> Vec<(OsString, OsString)> {
        let Some(name) = fault.name().filter(|_| matches!(fault, Fault::Threads | Fault::ForkExec)) else {
            return Vec::new();
        };
        vec![
            ("LD_PRELOAD".into(), self.library.clone().into()),
            ("HOTPATCH_PROOF_FAULT".into(), name.into()),
            ("HOTPATCH_PROOF_FAULT_COUNT".into(), self.counts.clone().into()),
        ]
    }

    /// The rounds the helper's processes wrote, summed, and their files removed.
    pub fn take_rounds(&self) -> u64 {
        let (Some(dir), Some(prefix)) = (self.counts.parent(), self.counts.file_name()) else { return 0 };
        let prefix = format!("{}.", prefix.to_string_lossy());
        let Ok(entries) = std::fs::read_dir(dir) else { return 0 };
        let mut total = 0;
        for e in entries.flatten() {
            if e.file_name().to_string_lossy().starts_with(&prefix) {
                total += std::fs::read_to_string(e.path()).ok().and_then(|t| t.trim().parse::<u64>().ok()).unwrap_or(0);
                let _ = std::fs::remove_file(e.path());
            }
        }
        total
    }
}

/// The server's processes in a memory cgroup with a hog; removed when dropped.
pub struct MemoryPressure {
    cgroup: PathBuf,
    stop: Arc<AtomicBool>,
    restarts: Arc<AtomicU64>,
    hog: Option<JoinHandle<()>>,
}

impl MemoryPressure {
    pub fn start(pids: &[i32]) -> anyhow::Result<MemoryPressure> {
        let Some(&first) = pids.first() else { bail!("no server process to put under memory pressure") };
        let cgroup = Path::new(CGROUP_MEMORY).join(format!("hotpatch-proof-{first}"));
        std::fs::create_dir(&cgroup)
            .with_context(|| format!("cannot create {} (a cgroup v1 memory hierarchy is needed)", cgroup.display()))?;
        let pressure = MemoryPressure {
            cgroup,
            stop: Arc::new(AtomicBool::new(false)),
            restarts: Arc::new(AtomicU64::new(0)),
            hog: None,
        };
        // The server's pages come along, so the limit counts them (refused
        // by kernels that dropped charge moving: the limit then counts what
        // the server touches from now on, the hog still fills the rest).
        let _ = pressure.write("memory.move_charge_at_immigrate", "3");
        for pid in pids {
            pressure.write("cgroup.procs", &pid.to_string())?;
        }
        let used: u64 = pressure.read("memory.usage_in_bytes")?;
        pressure.write("memory.limit_in_bytes", &(used + HOG_ROOM).to_string())?;
        Ok(pressure.with_hog())
    }

    /// A hog that reads /dev/zero into memory without end (`tail` keeps the
    /// unfinished line), inside the cgroup; restarted each time it is killed.
    fn with_hog(mut self) -> MemoryPressure {
        let (stop, restarts) = (self.stop.clone(), self.restarts.clone());
        let procs = self.cgroup.join("cgroup.procs");
        self.hog = Some(std::thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                let Ok(mut hog) = spawn_hog(&procs) else { return };
                while !stop.load(Ordering::SeqCst) && matches!(hog.try_wait(), Ok(None)) {
                    std::thread::sleep(Duration::from_millis(20));
                }
                if stop.load(Ordering::SeqCst) {
                    let _ = hog.kill();
                }
                let _ = hog.wait();
                restarts.fetch_add(1, Ordering::SeqCst);
            }
        }));
        self
    }

    /// Limit hits so far.
    pub fn counts(&self) -> FaultCounts {
        FaultCounts {
            memory_limit_hits: self.read("memory.failcnt").unwrap_or(0),
            hog_restarts: self.restarts.load(Ordering::SeqCst),
            ..FaultCounts::default()
        }
    }

    fn write(&self, file: &str, value: &str) -> anyhow::Result<()> {
        let path = self.cgroup.join(file);
        std::fs::write(&path, value).with_context(|| format!("cannot write {value} to {}", path.display()))
    }

    fn read(&self, file: &str) -> anyhow::Result<u64> {
        let path = self.cgroup.join(file);
        let text = std::fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
        text.trim().parse().with_context(|| format!("{} holds {text:?}, not a number", path.display()))
    }
}

/// The hog joins the cgroup before it allocates: the shell moves itself,
/// makes itself the OOM killer's first choice (lowering the server's score
/// instead needs CAP_SYS_RESOURCE, which root lacks in some containers),
/// then becomes `tail`.
fn spawn_hog(procs: &Path) -> std::io::Result<Child> {
    Command::new("/bin/sh")
        .arg("-c")
        .arg("echo $$ > \"$1\" && echo 1000 > /proc/self/oom_score_adj && exec tail /dev/zero")
        .arg("hog")
        .arg(procs)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
}

impl Drop for MemoryPressure {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(h) = self.hog.take() {
            let _ = h.join();
        }
        // Empty once the server is gone (the caller drops the server first).
        for _ in 0..50 {
            if std::fs::remove_dir(&self.cgroup).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}
