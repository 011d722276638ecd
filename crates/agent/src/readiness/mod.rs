//! Readiness: the machine prerequisites for hotpatching, each checked and
//! reported with its state, why it matters and how to fix it.
//!
//! A fact the machine does not expose (no UEFI, no Yama, no lockdown file, as
//! in a Firecracker VM) is "not available", never an error. Which checks are
//! required is policy ([`Policy`]); the others are advisory.

use std::path::Path;

use serde::Serialize;

mod firmware;
mod local;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum State {
    Ok,
    Failed,
    /// Works, but something may get in the way.
    Warning,
    /// The machine does not expose this (the file does not exist).
    NotAvailable,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Ok => "ok",
            State::Failed => "failed",
            State::Warning => "warning",
            State::NotAvailable => "not available",
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Check {
    pub name: &'static str,
    pub state: State,
    /// A failure of a required check makes the machine not ready.
    pub required: bool,
    /// What was found.
    pub detail: String,
    pub why: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
}

/// A kernel livepatch module found under `/sys/kernel/livepatch`.
#[derive(Debug, Clone, Serialize)]
pub struct Livepatch {
    pub name: String,
    pub enabled: Option<bool>,
    pub transition: Option<bool>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Readiness {
    pub ready: bool,
    pub checks: Vec<Check>,
    pub kernel_livepatches: Vec<Livepatch>,
}

/// Names of the checks that must pass for the machine to count as ready.
#[derive(Debug, Clone)]
pub struct Policy {
    pub required: Vec<String>,
}

impl Default for Policy {
    fn default() -> Policy {
        let names = [
            "architecture",
            "kernel",
            "privileges",
            "ptrace-scope",
            "proc",
            "proc-mem",
            "memfd",
            "trust",
            "debug-roots",
        ];
        Policy { required: names.iter().map(|s| s.to_string()).collect() }
    }
}

/// Where the agent's own files are, for the checks that concern them.
#[derive(Debug, Clone)]
pub struct Paths<'a> {
    pub trust_dir: &'a Path,
    pub state_dir: &'a Path,
}

pub(crate) fn read_trimmed(path: &str) -> Option<String> {
    std::fs::read_to_string(path).ok().map(|s| s.trim().to_string())
}

fn check(name: &'static str, state: State, detail: impl Into<String>, why: &'static str) -> Check {
    Check { name, state, required: false, detail: detail.into(), why, fix: None }
}

impl Check {
    fn fix(mut self, fix: impl Into<String>) -> Check {
        if matches!(self.state, State::Failed | State::Warning) {
            self.fix = Some(fix.into());
        }
        self
    }
}

/// Every check, with `policy` deciding which are required.
pub fn assess(paths: &Paths<'_>, policy: &Policy) -> Readiness {
    let mut checks = machine_checks();
    checks.push(local::trust(paths.trust_dir));
    checks.push(local::state_dir(paths.state_dir));
    checks.push(local::server(paths.state_dir));
    checks.push(local::catalog(paths.state_dir));
    checks.push(local::debug_roots());
    for c in &mut checks {
        c.required = policy.required.iter().any(|r| r == c.name);
    }
    let ready = checks.iter().all(|c| !c.required || matches!(c.state, State::Ok | State::Warning));
    Readiness { ready, checks, kernel_livepatches: kernel_livepatches(Path::new("/sys/kernel/livepatch")) }
}

/// The checks that concern the machine alone (no agent files): what the
/// agent reports at check-in.
pub fn machine_checks() -> Vec<Check> {
    vec![
        architecture(),
        kernel(),
        privileges(),
        ptrace_scope(),
        proc_mounted(),
        proc_mem(),
        memfd(),
        lsm(),
        firmware::uefi(),
        firmware::secure_boot(),
        firmware::lockdown(),
        firmware::virtualization(),
    ]
}

fn architecture() -> Check {
    let arch = crate::facts::arch();
    let why = "the engine writes x86_64 jumps; other architectures are refused";
    if arch == "x86_64" {
        check("architecture", State::Ok, arch, why)
    } else {
        check("architecture", State::Failed, format!("{arch} is not supported yet"), why)
            .fix("hotpatch runs on x86_64 machines only for now")
    }
}

/// `memfd_create` needs 3.17; `PTRACE_SEIZE`/`INTERRUPT` 3.4.
fn kernel() -> Check {
    let release = crate::facts::kernel();
    let why = "memfd_create (3.17) and PTRACE_SEIZE (3.4) are needed";
    let mut parts = release.split(|c: char| !c.is_ascii_digit()).filter_map(|p| p.parse::<u32>().ok());
    match (parts.next(), parts.next()) {
        (Some(major), Some(minor)) if (major, minor) >= (3, 17) => check("kernel", State::Ok, release, why),
        (Some(_), Some(_)) => check("kernel", State::Failed, format!("{release} is older than 3.17"), why)
            .fix("boot a kernel of version 3.17 or later"),
        _ => check("kernel", State::Warning, format!("cannot read the version of {release:?}"), why),
    }
}

/// Effective capabilities of this process, from `/proc/self/status`.
fn cap_eff() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let hex = status.lines().find_map(|l| l.strip_prefix("CapEff:"))?.trim().to_string();
    u64::from_str_radix(&hex, 16).ok()
}

const CAP_SYS_PTRACE: u32 = 19;

fn privileges() -> Check {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    let ptrace_cap = cap_eff().is_some_and(|c| c & (1 << CAP_SYS_PTRACE) != 0);
    let why = "attaching to other users' processes and writing their memory needs root or CAP_SYS_PTRACE";
    match (euid == 0, ptrace_cap) {
        (true, true) => check("privileges", State::Ok, "running as root with CAP_SYS_PTRACE", why),
        (false, true) => check("privileges", State::Ok, format!("uid {euid} with CAP_SYS_PTRACE"), why),
        (true, false) => check("privileges", State::Failed, "root, but CAP_SYS_PTRACE is not effective", why)
            .fix("give the agent CAP_SYS_PTRACE (systemd: AmbientCapabilities=CAP_SYS_PTRACE)"),
        (false, false) => check("privileges", State::Failed, format!("uid {euid} without CAP_SYS_PTRACE"), why)
            .fix("run as root (sudo hotpatch ...)"),
    }
}

fn ptrace_scope() -> Check {
    let why = "Yama's ptrace_scope 3 forbids every ptrace attach until reboot";
    match read_trimmed("/proc/sys/kernel/yama/ptrace_scope").as_deref() {
        None => check("ptrace-scope", State::Ok, "Yama not present: ptrace limited only by ordinary permissions", why),
        Some(v @ ("0" | "1" | "2")) => {
            check("ptrace-scope", State::Ok, format!("Yama ptrace_scope {v}: root with CAP_SYS_PTRACE may attach"), why)
        }
        Some("3") => check("ptrace-scope", State::Failed, "Yama ptrace_scope 3: attaching is disabled", why)
            .fix("set kernel.yama.ptrace_scope to 2 or lower at boot (sysctl.d) and reboot"),
        Some(v) => check("ptrace-scope", State::Warning, format!("unknown Yama ptrace_scope {v:?}"), why),
    }
}

fn proc_mounted() -> Check {
    let why = "processes, their mappings and their memory are read through /proc";
    if Path::new("/proc/self/maps").exists() && Path::new("/proc/self/map_files").exists() {
        check("proc", State::Ok, "/proc is mounted", why)
    } else {
        check("proc", State::Failed, "/proc/self/maps or /proc/self/map_files is missing", why)
            .fix("mount procfs on /proc")
    }
}

/// `proc_mem.force_override=never` (Linux 6.12+) forbids the writes the engine makes.
fn proc_mem() -> Check {
    let why = "sites are written through /proc/PID/mem, also on read-only text pages";
    let cmdline = read_trimmed("/proc/cmdline").unwrap_or_default();
    match cmdline.split_whitespace().find_map(|w| w.strip_prefix("proc_mem.force_override=")) {
        Some("never") => {
            check("proc-mem", State::Failed, "proc_mem.force_override=never on the kernel command line", why)
                .fix("boot without proc_mem.force_override=never (or with =ptrace)")
        }
        Some(v) => check("proc-mem", State::Ok, format!("proc_mem.force_override={v}"), why),
        None => check("proc-mem", State::Ok, "writes by a ptrace attacher are allowed (kernel default)", why),
    }
}

fn memfd() -> Check {
    let why = "patch regions are sealed memfds, mapped read+execute (W^X, MemoryDenyWriteExecute-proof)";
    let name = c"hotpatch-readiness";
    // SAFETY: memfd_create with a valid C string; the fd is closed right away.
    let fd = unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING) };
    if fd < 0 {
        let e = std::io::Error::last_os_error();
        return check("memfd", State::Failed, format!("memfd_create failed: {e}"), why)
            .fix("allow memfd_create (seccomp policy or kernel configuration)");
    }
    // SAFETY: fd was just returned by memfd_create and is ours.
    unsafe { libc::close(fd) };
    check("memfd", State::Ok, "memfd_create with sealing works", why)
}

fn lsm() -> Check {
    let why = "SELinux or AppArmor policy can deny ptrace to a confined agent";
    let Some(list) = read_trimmed("/sys/kernel/security/lsm") else {
        return check("lsm", State::NotAvailable, "/sys/kernel/security/lsm does not exist", why);
    };
    let selinux_enforcing = read_trimmed("/sys/fs/selinux/enforce").as_deref() == Some("1");
    let apparmor = list.split(',').any(|m| m == "apparmor");
    if selinux_enforcing || apparmor {
        let which = if selinux_enforcing { "SELinux enforcing" } else { "AppArmor" };
        check("lsm", State::Warning, format!("{which} active (modules: {list})"), why)
            .fix("let the agent's domain or profile use ptrace (read|trace) on the processes to patch")
    } else {
        check("lsm", State::Ok, format!("modules: {list}"), why)
    }
}

/// Livepatch modules loaded in the running kernel, with their state.
pub fn kernel_livepatches(root: &Path) -> Vec<Livepatch> {
    let Ok(entries) = std::fs::read_dir(root) else { return Vec::new() };
    let flag = |dir: &Path, name: &str| std::fs::read_to_string(dir.join(name)).ok().map(|v| v.trim() == "1");
    let mut out: Vec<Livepatch> = entries
        .filter_map(Result::ok)
        .map(|e| {
            let dir = e.path();
            Livepatch {
                name: e.file_name().to_string_lossy().into_owned(),
                enabled: flag(&dir, "enabled"),
                transition: flag(&dir, "transition"),
            }
        })
        .collect();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}
