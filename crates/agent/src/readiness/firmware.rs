//! Firmware and platform facts: advisory, and often not exposed.

use super::{Check, State, check, read_trimmed};
use std::path::Path;

const SECURE_BOOT_VAR: &str = "/sys/firmware/efi/efivars/SecureBoot-8be4df61-93ca-11d2-aa0d-00e098032b8c";

pub fn uefi() -> Check {
    let why = "Secure Boot and lockdown only exist on UEFI machines";
    if Path::new("/sys/firmware/efi").exists() {
        check("uefi", State::Ok, "booted through UEFI", why)
    } else {
        check("uefi", State::NotAvailable, "/sys/firmware/efi does not exist (BIOS boot, or a VM without UEFI)", why)
    }
}

pub fn secure_boot() -> Check {
    let why = "with Secure Boot, kernel livepatch modules must be signed; user-space hotpatches are unaffected";
    match std::fs::read(SECURE_BOOT_VAR) {
        // The variable is 4 bytes of attributes, then the value.
        Ok(bytes) => match bytes.get(4) {
            Some(1) => check("secure-boot", State::Ok, "enabled", why),
            Some(_) => check("secure-boot", State::Ok, "disabled", why),
            None => check("secure-boot", State::Warning, "the SecureBoot variable is malformed", why),
        },
        Err(_) => check("secure-boot", State::NotAvailable, "no SecureBoot EFI variable", why),
    }
}

pub fn lockdown() -> Check {
    let why = "kernel lockdown restricts kernel patching; user-space hotpatches are unaffected";
    let Some(text) = read_trimmed("/sys/kernel/security/lockdown") else {
        return check("lockdown", State::NotAvailable, "/sys/kernel/security/lockdown does not exist", why);
    };
    let mode = text.split_whitespace().find(|w| w.starts_with('[')).map(|w| w.trim_matches(['[', ']']));
    check("lockdown", State::Ok, mode.unwrap_or("unknown").to_string(), why)
}

pub fn virtualization() -> Check {
    let why = "informational: hotpatching works the same in a VM";
    let hypervisor = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .is_some_and(|t| t.lines().any(|l| l.starts_with("flags") && l.split_whitespace().any(|f| f == "hypervisor")));
    let vendor = read_trimmed("/sys/class/dmi/id/sys_vendor").filter(|v| !v.is_empty());
    match (hypervisor, vendor) {
        (true, Some(v)) => check("virtualization", State::Ok, format!("virtual machine ({v})"), why),
        (true, None) => check("virtualization", State::Ok, "virtual machine", why),
        (false, Some(v)) => check("virtualization", State::Ok, format!("no hypervisor flag ({v})"), why),
        (false, None) => check("virtualization", State::NotAvailable, "no hypervisor flag, no DMI vendor", why),
    }
}
