//! Whether the running kernel is older than the newest one installed (a reboot
//! would bring it). Not available when `/boot` lists no kernel, as in a VM
//! booted with an external kernel.

use serde::Serialize;

#[derive(Debug, Clone, Serialize)]
pub struct KernelScan {
    pub running: String,
    pub newest_installed: Option<String>,
    pub reboot_required: bool,
    pub reason: String,
}

/// Numeric parts of a version, for ordering `6.1.0-18-amd64` after `6.1.0-9-amd64`.
fn version_key(v: &str) -> Vec<u64> {
    v.split(|c: char| !c.is_ascii_digit()).filter_map(|p| p.parse().ok()).collect()
}

pub fn newest(installed: &[String]) -> Option<String> {
    installed.iter().max_by(|a, b| version_key(a).cmp(&version_key(b))).cloned()
}

pub fn scan() -> KernelScan {
    let running = crate::facts::kernel();
    let installed: Vec<String> = std::fs::read_dir("/boot")
        .map(|d| {
            d.filter_map(Result::ok)
                .filter_map(|e| e.file_name().to_str().and_then(|n| n.strip_prefix("vmlinuz-")).map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    let Some(newest) = newest(&installed) else {
        return KernelScan {
            running,
            newest_installed: None,
            reboot_required: false,
            reason: "not available: no kernel installed under /boot".into(),
        };
    };
    let reboot_required = version_key(&newest) > version_key(&running);
    let reason = if reboot_required {
        format!("kernel {newest} is installed but {running} runs; reboot to run it")
    } else {
        format!("the running kernel {running} is the newest installed")
    };
    KernelScan { running, newest_installed: Some(newest), reboot_required, reason }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_newest_kernel_is_ordered_by_its_numbers() {
        let installed = ["6.1.0-9-amd64", "6.1.0-18-amd64", "5.10.0-30-amd64"].map(String::from);
        assert_eq!(newest(&installed).as_deref(), Some("6.1.0-18-amd64"));
        assert_eq!(newest(&[]), None);
    }
}
