//! Why the kernel refused us a process. "Needs root" is the usual answer but
//! a misleading one when we already are root: then the refusal comes from
//! Yama, a security module, a sandbox around hotpatch itself, or a target
//! holding capabilities we lack. The facts are read from `/proc` and
//! `/sys`; [`explain`] is pure so every combination is testable.

use std::path::Path;

const CAP_SYS_PTRACE: u32 = 19;

/// What we can learn about the tracer and the target without ptrace.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AccessFacts {
    pub euid: u32,
    /// Our effective capabilities (`CapEff`), if readable.
    pub our_caps: Option<u64>,
    /// The target's permitted capabilities (`CapPrm`), if readable.
    pub target_caps: Option<u64>,
    /// Yama's `ptrace_scope`, if Yama is present.
    pub yama_scope: Option<String>,
    /// Active security modules (`/sys/kernel/security/lsm`), if readable.
    pub lsms: Vec<String>,
    /// Whether the target lives in another user namespace than ours
    /// (`None`: its namespace link could not be read).
    pub other_user_ns: Option<bool>,
}

impl AccessFacts {
    pub fn read(pid: i32) -> AccessFacts {
        let status = |p: &str| std::fs::read_to_string(p).ok();
        let ours = status("/proc/self/status");
        let theirs = status(&format!("/proc/{pid}/status"));
        AccessFacts {
            // SAFETY: geteuid has no preconditions and cannot fail.
            euid: unsafe { libc::geteuid() },
            our_caps: ours.as_deref().and_then(|s| cap_field(s, "CapEff:")),
            target_caps: theirs.as_deref().and_then(|s| cap_field(s, "CapPrm:")),
            yama_scope: status("/proc/sys/kernel/yama/ptrace_scope").map(|s| s.trim().to_string()),
            lsms: status("/sys/kernel/security/lsm")
                .map(|s| s.trim().split(',').filter(|m| !m.is_empty()).map(str::to_string).collect())
                .unwrap_or_default(),
            other_user_ns: user_ns(Path::new("/proc/self/ns/user"))
                .zip(user_ns(Path::new(&format!("/proc/{pid}/ns/user"))))
                .map(|(a, b)| a != b),
        }
    }

    fn has_ptrace_cap(&self) -> bool {
        self.our_caps.is_some_and(|c| c & (1 << CAP_SYS_PTRACE) != 0)
    }
}

fn cap_field(status: &str, field: &str) -> Option<u64> {
    let hex = status.lines().find_map(|l| l.strip_prefix(field))?.trim();
    u64::from_str_radix(hex, 16).ok()
}

fn user_ns(link: &Path) -> Option<String> {
    std::fs::read_link(link).ok().map(|p| p.to_string_lossy().into_owned())
}

/// Names of the capabilities set in `caps`, by number where we have no name.
fn cap_names(caps: u64) -> Vec<String> {
    const NAMES: [&str; 41] = [
        "chown",
        "dac_override",
        "dac_read_search",
        "fowner",
        "fsetid",
        "kill",
        "setgid",
        "setuid",
        "setpcap",
        "linux_immutable",
        "net_bind_service",
        "net_broadcast",
        "net_admin",
        "net_raw",
        "ipc_lock",
        "ipc_owner",
        "sys_module",
        "sys_rawio",
        "sys_chroot",
        "sys_ptrace",
        "sys_pacct",
        "sys_admin",
        "sys_boot",
        "sys_nice",
        "sys_resource",
        "sys_time",
        "sys_tty_config",
        "mknod",
        "lease",
        "audit_write",
        "audit_control",
        "setfcap",
        "mac_override",
        "mac_admin",
        "syslog",
        "wake_alarm",
        "block_suspend",
        "audit_read",
        "perfmon",
        "bpf",
        "checkpoint_restore",
    ];
    (0..64)
        .filter(|bit| caps & (1u64 << bit) != 0)
        .map(|bit| NAMES.get(bit).map_or(format!("capability {bit}"), |n| format!("CAP_{}", n.to_uppercase())))
        .collect()
}

/// The most likely reason, in words an operator can act on.
pub fn explain(pid: i32, facts: &AccessFacts) -> String {
    if facts.euid != 0 && !facts.has_ptrace_cap() {
        return "hotpatch needs root or CAP_SYS_PTRACE".to_string();
    }
    if facts.yama_scope.as_deref() == Some("3") {
        return "Yama's ptrace_scope is 3: the kernel forbids every ptrace attach until reboot".to_string();
    }
    if !facts.has_ptrace_cap() {
        return "running as root, but CAP_SYS_PTRACE is not in the effective set (a container or systemd \
                unit may have dropped it)"
            .to_string();
    }
    let who = if facts.euid == 0 { "root".to_string() } else { format!("uid {}", facts.euid) };
    let mut why = format!("the kernel refused although hotpatch runs as {who} with CAP_SYS_PTRACE");
    if facts.other_user_ns == Some(true) {
        why.push_str(&format!("; process {pid} is in another user namespace, where our capabilities do not count"));
    }
    if let (Some(ours), Some(theirs)) = (facts.our_caps, facts.target_caps)
        && theirs & !ours != 0
    {
        let lacking = cap_names(theirs & !ours).join(", ");
        why.push_str(&format!("; process {pid} holds capabilities we lack ({lacking})"));
    }
    let lsm: Vec<&str> =
        facts.lsms.iter().map(String::as_str).filter(|m| !matches!(*m, "capability" | "lockdown")).collect();
    match lsm.is_empty() {
        false => why.push_str(&format!(
            "; a security module may deny it (active: {}): check its log (audit, dmesg) for a ptrace denial",
            lsm.join(", ")
        )),
        true => why.push_str(
            "; a sandbox around hotpatch itself (Landlock, seccomp, a container runtime) or a security \
             module may deny it",
        ),
    }
    why
}

#[cfg(test)]
mod tests {
    use super::*;

    fn root() -> AccessFacts {
        AccessFacts { euid: 0, our_caps: Some(0x1ff_ffff_ffff), target_caps: Some(0), ..AccessFacts::default() }
    }

    #[test]
    fn an_unprivileged_user_is_told_to_become_root() {
        let facts = AccessFacts { euid: 1000, our_caps: Some(0), ..AccessFacts::default() };
        assert_eq!(explain(7, &facts), "hotpatch needs root or CAP_SYS_PTRACE");
    }

    #[test]
    fn root_is_not_told_to_become_root() {
        let why = explain(1, &root());
        assert!(!why.contains("needs root"), "{why}");
        assert!(why.contains("runs as root with CAP_SYS_PTRACE"), "{why}");
        assert!(why.contains("sandbox"), "{why}");
    }

    #[test]
    fn root_without_the_capability_is_told_which_one() {
        let facts = AccessFacts { our_caps: Some(0x1ff_ffff_ffff & !(1 << CAP_SYS_PTRACE)), ..root() };
        assert!(explain(1, &facts).contains("CAP_SYS_PTRACE is not in the effective set"));
    }

    #[test]
    fn the_capabilities_the_target_has_and_we_lack_are_named() {
        let facts = AccessFacts { our_caps: Some(0x1ff_feff_ffff), target_caps: Some(0x1ff_ffff_ffff), ..root() };
        assert!(explain(1, &facts).contains("holds capabilities we lack (CAP_SYS_RESOURCE)"));
    }

    #[test]
    fn yama_3_and_security_modules_and_namespaces_are_named() {
        let yama = AccessFacts { yama_scope: Some("3".into()), ..root() };
        assert!(explain(1, &yama).contains("ptrace_scope is 3"));
        let lsm =
            AccessFacts { lsms: vec!["capability".into(), "apparmor".into()], other_user_ns: Some(true), ..root() };
        let why = explain(9, &lsm);
        assert!(why.contains("(active: apparmor)") && why.contains("another user namespace"), "{why}");
    }

    #[test]
    fn the_facts_of_this_process_are_read() {
        let facts = AccessFacts::read(std::process::id() as i32);
        assert!(facts.our_caps.is_some() && facts.target_caps.is_some());
        assert_eq!(facts.other_user_ns, Some(false));
    }
}
