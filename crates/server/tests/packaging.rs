//! The Debian packages, built by their scripts from this build's binaries:
//! contents, modes, maintainer scripts, and the systemd units checked by
//! `systemd-analyze verify`. Installing and starting them needs a running
//! systemd, which this machine does not have.

use std::path::{Path, PathBuf};
use std::process::Command;

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs `scripts/NAME OUT` packaging the binaries in `bin_dir`; returns the .deb.
fn package(script: &str, bin_dir: &Path, out: &Path, deb_prefix: &str) -> PathBuf {
    // A debug build is large: a fast compressor keeps the test short (the scripts default to xz).
    let mut cmd = Command::new(workspace().join("scripts").join(script));
    cmd.arg(out).env("HOTPATCH_PREBUILT", bin_dir);
    cmd.env("DPKG_DEB_COMPRESSOR_TYPE", "gzip").env("DPKG_DEB_COMPRESSOR_LEVEL", "1");
    run(&mut cmd);
    let found = std::fs::read_dir(out).expect("out dir").map_while(Result::ok).map(|e| e.path()).find(|p| {
        p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with(deb_prefix) && n.ends_with(".deb"))
    });
    found.unwrap_or_else(|| panic!("no {deb_prefix}*.deb in {}", out.display()))
}

/// The unit, its ExecStart binary replaced by the extracted one, verified offline:
/// any warning (an unknown or misspelt setting) fails the test.
fn verify_unit(unit: &Path, installed: &str, extracted: &Path, scratch: &Path) {
    if Command::new("systemd-analyze").arg("--version").output().is_err() {
        eprintln!("systemd-analyze not available: {} not verified", unit.display());
        return;
    }
    let text = std::fs::read_to_string(unit).expect("unit").replace(installed, &extracted.display().to_string());
    let copy = scratch.join(unit.file_name().expect("name"));
    std::fs::write(&copy, text).expect("write unit");
    let out =
        Command::new("systemd-analyze").args(["verify", "--man=no"]).arg(&copy).output().expect("systemd-analyze");
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success() && said.trim().is_empty(), "{}: {said}", unit.display());
}

/// `dpkg-deb --contents` as (mode, owner, path) rows.
fn contents(deb: &Path) -> Vec<(String, String, String)> {
    run(Command::new("dpkg-deb").arg("--contents").arg(deb))
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            Some((f.first()?.to_string(), f.get(1)?.to_string(), f.last()?.trim_start_matches('.').to_string()))
        })
        .collect()
}

fn has(rows: &[(String, String, String)], mode: &str, path: &str) -> bool {
    rows.iter().any(|(m, o, p)| m == mode && o == "root/root" && p == path)
}

#[test]
fn the_server_package_holds_its_binary_unit_user_and_private_data_directory() {
    let scratch = tempfile::tempdir().expect("tempdir");
    let bin_dir = Path::new(env!("CARGO_BIN_EXE_hotpatch-server")).parent().expect("bin dir").to_path_buf();
    let deb = package("package-server", &bin_dir, &scratch.path().join("out"), "hotpatch-server_");
    let rows = contents(&deb);
    assert!(has(&rows, "-rwxr-xr-x", "/usr/bin/hotpatch-server"), "{rows:?}");
    assert!(has(&rows, "-rw-r--r--", "/lib/systemd/system/hotpatch-server.service"), "{rows:?}");
    assert!(has(&rows, "-rw-r--r--", "/etc/default/hotpatch-server"), "{rows:?}");
    assert_eq!(run(Command::new("dpkg-deb").args(["--field"]).arg(&deb).arg("Package")).trim(), "hotpatch-server");

    let control = scratch.path().join("control");
    run(Command::new("dpkg-deb").arg("--control").arg(&deb).arg(&control));
    let postinst = std::fs::read_to_string(control.join("postinst")).expect("postinst");
    assert!(postinst.contains("useradd --system") && postinst.contains("hotpatch-server"), "{postinst}");
    assert!(postinst.contains("install -d -m 0700 -o hotpatch-server -g hotpatch-server /var/lib/hotpatch-server"));
    let conffiles = std::fs::read_to_string(control.join("conffiles")).expect("conffiles");
    assert_eq!(conffiles.trim(), "/etc/default/hotpatch-server");
    run(Command::new("sh").arg("-n").arg(control.join("postinst")));

    let root = scratch.path().join("root");
    run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&root));
    let unit = root.join("lib/systemd/system/hotpatch-server.service");
    let text = std::fs::read_to_string(&unit).expect("unit");
    for setting in [
        "User=hotpatch-server",
        "StateDirectoryMode=0700",
        "UMask=0077",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "CapabilityBoundingSet=\n",
        "MemoryDenyWriteExecute=yes",
    ] {
        assert!(text.contains(setting), "unit lacks {setting:?}");
    }
    let binary = root.join("usr/bin/hotpatch-server");
    let help = run(Command::new(&binary).arg("--help"));
    assert!(help.contains("--data") && help.contains("--listen"), "the packaged binary runs: {help}");
    verify_unit(&unit, "/usr/bin/hotpatch-server", &binary, scratch.path());
}

#[test]
fn the_agent_package_holds_the_command_unit_config_and_trust_directory() {
    let bin_dir = Path::new(env!("CARGO_BIN_EXE_hotpatch-server")).parent().expect("bin dir").to_path_buf();
    if !bin_dir.join("hotpatch").exists() {
        // Built by the workspace's tests (scripts/test) or `cargo build -p hotpatch-cli`.
        eprintln!("{} has no hotpatch binary: agent package not checked", bin_dir.display());
        return;
    }
    let scratch = tempfile::tempdir().expect("tempdir");
    let deb = package("package-agent", &bin_dir, &scratch.path().join("out"), "hotpatch_");
    let rows = contents(&deb);
    assert!(has(&rows, "-rwxr-xr-x", "/usr/bin/hotpatch"), "{rows:?}");
    assert!(has(&rows, "-rw-r--r--", "/lib/systemd/system/hotpatch-agent.service"), "{rows:?}");
    assert!(has(&rows, "-rw-r--r--", "/etc/hotpatch/agent.toml"), "{rows:?}");
    assert!(has(&rows, "drwxr-xr-x", "/etc/hotpatch/trusted-keys/"), "{rows:?}");
    let root = scratch.path().join("root");
    run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&root));
    let unit = root.join("lib/systemd/system/hotpatch-agent.service");
    verify_unit(&unit, "/usr/bin/hotpatch", &root.join("usr/bin/hotpatch"), scratch.path());
}
