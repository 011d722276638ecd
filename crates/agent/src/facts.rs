//! Machine facts reported at check-in, read from /proc and uname, and a
//! readiness summary (the prerequisites for hotpatching on this machine).

use serde_json::{Value, json};

use crate::protocol::Facts;

fn read_trimmed(path: &str) -> Option<String> {
    std::fs::read_to_string(path).ok().map(|s| s.trim().to_string()).filter(|s| !s.is_empty())
}

/// The systemd service of a process: the `.service` component of its cgroup
/// v2 path (`0::/system.slice/nginx.service`), if any.
pub fn service_unit(pid: i32) -> Option<String> {
    service_in_cgroup(&std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?)
}

fn service_in_cgroup(text: &str) -> Option<String> {
    let path = text.lines().find_map(|l| l.strip_prefix("0::"))?;
    path.rsplit('/').find(|c| c.ends_with(".service") && c.len() > ".service".len()).map(str::to_string)
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

/// The machine prerequisites as the server stores them: the summary fields it
/// has always had, and each machine check's state by name. Firmware facts that
/// this machine does not expose are "not available", never failures.
pub fn readiness() -> Value {
    let checks = crate::readiness::machine_checks();
    let state = |name: &str| checks.iter().find(|c| c.name == name).map(|c| c.state);
    let ok = |name: &str| state(name) == Some(crate::readiness::State::Ok);
    let required = crate::readiness::Policy::default().required;
    let ready = checks
        .iter()
        .filter(|c| required.iter().any(|r| r == c.name))
        .all(|c| matches!(c.state, crate::readiness::State::Ok | crate::readiness::State::Warning));
    let by_name: serde_json::Map<String, Value> =
        checks.iter().map(|c| (c.name.to_string(), json!(c.state.as_str()))).collect();
    json!({
        "ready": ready,
        "root": ok("privileges"),
        "ptrace_scope": read_trimmed("/proc/sys/kernel/yama/ptrace_scope").unwrap_or_else(|| "not available".into()),
        "arch_supported": ok("architecture"),
        "efi": if ok("uefi") { "present" } else { "not available" },
        "checks": by_name,
    })
}

pub fn collect() -> Facts {
    Facts { hostname: hostname(), os: os(), kernel: kernel(), arch: arch(), cores: cores(), readiness: readiness() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_service_unit_is_the_service_component_of_the_cgroup_v2_path() {
        let unit = |text: &str| service_in_cgroup(text);
        assert_eq!(unit("0::/system.slice/nginx.service\n").as_deref(), Some("nginx.service"));
        assert_eq!(
            unit("1:name=systemd:/\n0::/system.slice/redis-server.service/worker\n").as_deref(),
            Some("redis-server.service")
        );
        assert_eq!(unit("0::/user.slice/user-0.slice/session-3.scope\n"), None, "a login session is no service");
        assert_eq!(unit("0::/\n"), None);
        assert_eq!(unit("4:memory:/x.service\n"), None, "only the unified (v2) hierarchy names systemd's units");
        assert_eq!(unit("0::/.service\n"), None);
        // This process is real: whatever its cgroup, the lookup answers without failing.
        let _ = service_unit(std::process::id() as i32);
    }
}
