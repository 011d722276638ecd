//! Machine facts reported at check-in, read from /proc and uname, and a
//! readiness summary (the prerequisites for hotpatching on this machine).

use serde_json::{Value, json};

use crate::protocol::Facts;

fn read_trimmed(path: &str) -> Option<String> {
    std::fs::read_to_string(path).ok().map(|s| s.trim().to_string()).filter(|s| !s.is_empty())
}

pub fn hostname() -> String {
    read_trimmed("/proc/sys/kernel/hostname").unwrap_or_else(|| "unknown".into())
}

/// PRETTY_NAME from os-release, the name a person recognises.
pub fn os() -> String {
    let text = std::fs::read_to_string("/etc/os-release")
        .or_else(|_| std::fs::read_to_string("/usr/lib/os-release"))
        .unwrap_or_default();
    text.lines()
        .find_map(|l| l.strip_prefix("PRETTY_NAME="))
        .map(|v| v.trim_matches('"').to_string())
        .unwrap_or_else(|| "unknown".into())
}

fn uname_field(pick: fn(&libc::utsname) -> &[libc::c_char]) -> String {
    // SAFETY: utsname is plain data; uname fills it and returns 0 on success.
    let mut u: libc::utsname = unsafe { std::mem::zeroed() };
    if unsafe { libc::uname(&mut u) } != 0 {
        return "unknown".into();
    }
    let field = pick(&u);
    let bytes: Vec<u8> = field.iter().take_while(|&&c| c != 0).map(|&c| c as u8).collect();
    String::from_utf8_lossy(&bytes).into_owned()
}

pub fn kernel() -> String {
    uname_field(|u| &u.release)
}

pub fn arch() -> String {
    uname_field(|u| &u.machine)
}

/// Logical CPUs listed in /proc/cpuinfo; physical and virtual cores are billed alike.
pub fn cores() -> u32 {
    let from_cpuinfo = std::fs::read_to_string("/proc/cpuinfo")
        .map(|t| t.lines().filter(|l| l.starts_with("processor")).count() as u32)
        .unwrap_or(0);
    if from_cpuinfo > 0 {
        from_cpuinfo
    } else {
        std::thread::available_parallelism().map(|n| n.get() as u32).unwrap_or(1)
    }
}

/// What the engine needs: root (ptrace and /proc/PID/mem), a Yama ptrace scope that
/// lets root attach, and a supported architecture. Firmware facts that this
/// machine does not expose are reported as "not available", never as failures.
pub fn readiness() -> Value {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let yama = read_trimmed("/proc/sys/kernel/yama/ptrace_scope");
    let ptrace_ok = yama.as_deref().is_none_or(|v| v != "3");
    let arch = arch();
    let arch_ok = arch == "x86_64";
    let secure_boot = if std::path::Path::new("/sys/firmware/efi").exists() { "present" } else { "not available" };
    json!({
        "ready": root && ptrace_ok && arch_ok,
        "root": root,
        "ptrace_scope": yama.unwrap_or_else(|| "not available".into()),
        "arch_supported": arch_ok,
        "efi": secure_boot,
    })
}

pub fn collect() -> Facts {
    Facts { hostname: hostname(), os: os(), kernel: kernel(), arch: arch(), cores: cores(), readiness: readiness() }
}
