//! `hotpatch keygen`, `pack`, `inspect` and `verify`, driven through the built
//! binary on objects gcc compiles in a temporary directory.

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const BASE_C: &str = r#"
#include <stdio.h>
#include <stdlib.h>

int counter;

__attribute__((noinline)) int check(int x) {
    if (x > 100) {
        return -1;
    }
    return x * 3 + 7;
}

/* One byte (`ret`): too small for a 5-byte jump. The asm keeps the calls. */
__attribute__((noinline)) void tiny(void) {
    __asm__ volatile("");
}

int main(int argc, char **argv) {
    int v = argc > 1 ? atoi(argv[1]) : 1;
    tiny();
    printf("%d %d\n", check(v), counter);
    return 0;
}
"#;

const FIX_C: &str = r#"
int check_v2(int x) {
    if (x > 10 || x < 0) {
        return -1;
    }
    return x * 3 + 7;
}

void tiny_v2(void) {
}
"#;

struct Env {
    dir: tempfile::TempDir,
}

impl Env {
    fn new() -> Env {
        let dir = tempfile::tempdir().expect("tempdir");
        let env = Env { dir };
        std::fs::write(env.path("base.c"), BASE_C).unwrap();
        std::fs::write(env.path("fix.c"), FIX_C).unwrap();
        env.tool("gcc", &["-O1", "-fcf-protection=none", "-o", "base", "base.c"]);
        env.tool("gcc", &["-c", "-fPIC", "-O2", "fix.c"]);
        env
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn tool(&self, program: &str, args: &[&str]) -> String {
        let out = Command::new(program).args(args).current_dir(self.dir.path()).output().unwrap();
        assert!(out.status.success(), "{program} {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    }

    /// `st_size` of a symbol in the baseline, from `nm -S`.
    fn nm_size(&self, symbol: &str) -> u64 {
        self.tool("nm", &["-S", "base"])
            .lines()
            .find_map(|l| {
                let parts: Vec<&str> = l.split_whitespace().collect();
                (parts.len() == 4 && parts[3] == symbol).then(|| u64::from_str_radix(parts[1], 16).unwrap())
            })
            .unwrap_or_else(|| panic!("nm -S lists no {symbol}"))
    }

    fn build_id(&self) -> String {
        self.tool("readelf", &["-n", "base"])
            .lines()
            .find_map(|l| l.trim().strip_prefix("Build ID: ").map(|s| s.trim().to_owned()))
            .expect("baseline has a build-id")
    }

    fn hotpatch(&self, args: &[&str]) -> Output {
        let out = Command::new(env!("CARGO_BIN_EXE_hotpatch"))
            .args(args)
            .current_dir(self.dir.path())
            .env("NO_COLOR", "1")
            .env_remove("HOTPATCH_LOG")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!stderr.contains("panicked"), "hotpatch {args:?} panicked: {stderr}");
        out
    }

    fn ok(&self, args: &[&str]) -> Output {
        let out = self.hotpatch(args);
        assert!(
            out.status.success(),
            "hotpatch {args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    fn ok_json(&self, args: &[&str]) -> Value {
        let mut all = vec!["--json"];
        all.extend_from_slice(args);
        let out = self.ok(&all);
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!("--json output of {args:?} is not JSON ({e}): {}", String::from_utf8_lossy(&out.stdout))
        })
    }

    /// Runs a command that must fail; returns its stderr.
    fn fails(&self, args: &[&str]) -> String {
        let out = self.hotpatch(args);
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(!out.status.success(), "hotpatch {args:?} succeeded: {}", String::from_utf8_lossy(&out.stdout));
        assert_eq!(out.status.code(), Some(1), "hotpatch {args:?} exit status {:?}: {stderr}", out.status);
        assert!(stderr.starts_with("error: "), "hotpatch {args:?} stderr: {stderr}");
        stderr
    }

    fn keygen(&self, name: &str) -> String {
        let out = self.ok_json(&["keygen", "--out", "keys", "--name", name]);
        out["key_id"].as_str().unwrap().to_owned()
    }

    /// `pack` with the standard arguments plus `extra`, to `output`.
    fn pack_args<'a>(&self, replace: &'a str, payload: &'a str, output: &'a str) -> Vec<&'a str> {
        vec![
            "pack",
            "--baseline",
            "base",
            "--payload",
            payload,
            "--replace",
            replace,
            "--level",
            "1",
            "--classification",
            "security",
            "--key",
            "keys/publisher.key",
            "-o",
            output,
        ]
    }
}

fn exists(path: &Path) -> bool {
    path.try_exists().unwrap()
}

#[test]
fn keygen_pack_inspect_verify() {
    use std::os::unix::fs::PermissionsExt;
    let env = Env::new();

    let keygen = env.ok_json(&["keygen", "--out", "keys"]);
    let key_id = keygen["key_id"].as_str().unwrap().to_owned();
    assert_eq!(key_id.len(), 16, "{keygen}");
    assert!(key_id.bytes().all(|b| b.is_ascii_hexdigit()));
    assert_eq!(keygen["secret_key"], "keys/publisher.key");
    assert_eq!(keygen["public_key"], "keys/publisher.pub");
    let mode = std::fs::metadata(env.path("keys/publisher.key")).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let public = std::fs::read_to_string(env.path("keys/publisher.pub")).unwrap();
    assert!(public.starts_with("hotpatch-public-key-v1 "), "{public}");

    let mut args = env.pack_args("check=check_v2", "fix.o", "fix.hpatch");
    args.extend(["--cve", "CVE-2024-12345", "--cve", "CVE-2025-0001", "--description", "bounds check"]);
    let pack = env.ok_json(&args);
    let file_len = std::fs::metadata(env.path("fix.hpatch")).unwrap().len();
    assert_eq!(pack["output"], "fix.hpatch");
    assert_eq!(pack["bytes"].as_u64(), Some(file_len));
    let manifest = &pack["manifest"];
    let build_id = env.build_id();
    assert_eq!(manifest["target"]["build_id"], build_id.as_str());
    assert_eq!(manifest["target"]["file_name"], "base");
    assert_eq!(manifest["target"]["machine"], "x86_64");
    assert_eq!(manifest["product"], "base");
    assert_eq!(manifest["patch_id"], format!("base-{}-l1", &build_id[..12]).as_str());
    assert_eq!(manifest["level"], 1);
    assert_eq!(manifest["classification"], "security");
    assert_eq!(manifest["cves"], serde_json::json!(["CVE-2024-12345", "CVE-2025-0001"]));
    assert_eq!(manifest["description"], "bounds check");
    assert_eq!(manifest["signing_key_id"], key_id.as_str());
    let functions = manifest["functions"].as_array().unwrap();
    assert_eq!(functions.len(), 1);
    assert_eq!(functions[0]["symbol"], "check");
    assert_eq!(functions[0]["replacement"], "check_v2");
    assert_eq!(functions[0]["size"].as_u64(), Some(env.nm_size("check")));
    assert_eq!(functions[0]["original_sha256"].as_str().unwrap().len(), 64);
    let payload = std::fs::read(env.path("fix.o")).unwrap();
    assert_eq!(manifest["payload_sha256"], hotpatch_sha256(&payload).as_str());
    // No temporary file left behind.
    let leftovers: Vec<_> = std::fs::read_dir(env.dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");

    let inspect = env.ok_json(&["inspect", "fix.hpatch"]);
    assert_eq!(inspect["file"], "fix.hpatch");
    assert_eq!(inspect["bytes"].as_u64(), Some(file_len));
    assert_eq!(inspect["payload_bytes"].as_u64(), Some(payload.len() as u64));
    assert_eq!(inspect["payload_ok"], true);
    assert_eq!(inspect["payload_problem"], Value::Null);
    assert!(inspect["signature"].as_str().unwrap().contains("not checked"));
    assert_eq!(&inspect["manifest"], manifest);

    let text = String::from_utf8(env.ok(&["inspect", "fix.hpatch"]).stdout).unwrap();
    for needle in ["signature not checked", "check_v2", "CVE-2024-12345, CVE-2025-0001", &key_id, "relocatable x86_64"]
    {
        assert!(text.contains(needle), "inspect output lacks {needle:?}:\n{text}");
    }

    for trust in ["keys/publisher.pub", "keys"] {
        let verify = env.ok_json(&["verify", "fix.hpatch", "--trust", trust]);
        assert_eq!(verify["verified"], true);
        assert_eq!(verify["key_id"], key_id.as_str());
        assert_eq!(verify["patch_id"], manifest["patch_id"]);
        assert_eq!(verify["level"], 1);
        assert_eq!(verify["target_build_id"], build_id.as_str());
    }
    let text = String::from_utf8(env.ok(&["verify", "fix.hpatch", "--trust", "keys"]).stdout).unwrap();
    assert!(text.starts_with("verified: "), "{text}");
    assert!(text.contains(&key_id), "{text}");

    // Explicit id and product.
    let mut args = env.pack_args("check=check_v2", "fix.o", "named.hpatch");
    args.extend(["--id", "my-fix_1.0", "--product", "Base Server"]);
    let pack = env.ok_json(&args);
    assert_eq!(pack["manifest"]["patch_id"], "my-fix_1.0");
    assert_eq!(pack["manifest"]["product"], "Base Server");
}

/// The package's payload hash as the format computes it (lower-case hex SHA-256).
fn hotpatch_sha256(bytes: &[u8]) -> String {
    let out = Command::new("sha256sum")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            use std::io::Write;
            child.stdin.take().unwrap().write_all(bytes)?;
            child.wait_with_output()
        })
        .unwrap();
    String::from_utf8(out.stdout).unwrap().split_whitespace().next().unwrap().to_owned()
}

#[test]
fn keygen_refuses_to_overwrite() {
    let env = Env::new();
    let first = env.keygen("publisher");
    let before = std::fs::read(env.path("keys/publisher.key")).unwrap();
    let stderr = env.fails(&["keygen", "--out", "keys"]);
    assert!(stderr.contains("refusing to overwrite"), "{stderr}");
    assert!(stderr.contains("publisher.key"), "{stderr}");
    assert_eq!(std::fs::read(env.path("keys/publisher.key")).unwrap(), before);
    // A lone public key (its secret moved away) is not overwritten either.
    std::fs::rename(env.path("keys/publisher.key"), env.path("publisher.key.moved")).unwrap();
    let pub_before = std::fs::read(env.path("keys/publisher.pub")).unwrap();
    let stderr = env.fails(&["keygen", "--out", "keys"]);
    assert!(stderr.contains("publisher.pub"), "{stderr}");
    assert_eq!(std::fs::read(env.path("keys/publisher.pub")).unwrap(), pub_before);
    assert!(!env.path("keys/publisher.key").exists(), "no secret key written without its public half");
    let second = env.keygen("other");
    assert_ne!(first, second);
    let stderr = env.fails(&["keygen", "--out", "keys", "--name", "a/b"]);
    assert!(stderr.contains("--name must be a plain file name"), "{stderr}");
}

#[test]
fn pack_refuses_an_unknown_symbol() {
    let env = Env::new();
    env.keygen("publisher");
    let stderr = env.fails(&env.pack_args("no_such_function=check_v2", "fix.o", "out.hpatch"));
    assert!(stderr.contains("no_such_function"), "{stderr}");
    assert!(stderr.contains("not found"), "{stderr}");
    assert!(!exists(&env.path("out.hpatch")));
}

/// A baseline whose DWARF says gcc compiled it with -fipa-ra (the -O2 default)
/// is refused, naming the option and the way out; -fno-ipa-ra packs; so does
/// --allow-ipa-ra, with a warning; without DWARF the pack goes on with a warning.
#[test]
fn pack_refuses_a_baseline_built_with_ipa_ra() {
    let env = Env::new();
    env.keygen("publisher");
    env.tool("gcc", &["-g", "-O2", "-fcf-protection=none", "-o", "base", "base.c"]);
    let stderr = env.fails(&env.pack_args("check=check_v2", "fix.o", "out.hpatch"));
    assert!(stderr.contains("-fipa-ra") && stderr.contains("-fno-ipa-ra") && stderr.contains("base.c"), "{stderr}");
    assert!(!exists(&env.path("out.hpatch")));

    let mut allowed = env.pack_args("check=check_v2", "fix.o", "allowed.hpatch");
    allowed.push("--allow-ipa-ra");
    let out = env.ok(&allowed);
    assert!(String::from_utf8_lossy(&out.stderr).contains("-fipa-ra"), "a warning says so");

    env.tool("gcc", &["-g", "-O2", "-fno-ipa-ra", "-fcf-protection=none", "-o", "base", "base.c"]);
    let out = env.ok(&env.pack_args("check=check_v2", "fix.o", "safe.hpatch"));
    assert!(!String::from_utf8_lossy(&out.stderr).contains("ipa-ra"), "no warning when DWARF shows -fno-ipa-ra");

    env.tool("gcc", &["-g0", "-O2", "-fcf-protection=none", "-o", "base", "base.c"]);
    let out = env.ok(&env.pack_args("check=check_v2", "fix.o", "unknown.hpatch"));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot tell"), "without DWARF the user is warned");
}

#[test]
fn pack_refuses_a_function_too_small_for_a_jump() {
    let env = Env::new();
    env.keygen("publisher");
    let size = env.nm_size("tiny");
    assert!(size < 5, "gcc made tiny {size} bytes; the test needs it smaller than a jump");
    let stderr = env.fails(&env.pack_args("tiny=tiny_v2", "fix.o", "out.hpatch"));
    assert!(stderr.contains(&format!("tiny is {size} bytes")), "{stderr}");
    assert!(stderr.contains("too small"), "{stderr}");
    assert!(!exists(&env.path("out.hpatch")));
}

#[test]
fn pack_refuses_a_payload_that_is_not_a_relocatable_object() {
    let env = Env::new();
    env.keygen("publisher");
    // The baseline executable handed over as the payload.
    let stderr = env.fails(&env.pack_args("check=check_v2", "base", "out.hpatch"));
    assert!(stderr.contains("relocatable"), "{stderr}");
    assert!(stderr.contains("executable"), "{stderr}");
    // The C source handed over as the payload.
    let stderr = env.fails(&env.pack_args("check=check_v2", "fix.c", "out.hpatch"));
    assert!(stderr.contains("not an ELF file"), "{stderr}");
    assert!(!exists(&env.path("out.hpatch")));
}

#[test]
fn pack_refuses_other_bad_requests() {
    let env = Env::new();
    env.keygen("publisher");
    let stderr = env.fails(&env.pack_args("check=check_v3", "fix.o", "out.hpatch"));
    assert!(stderr.contains("check_v3 is not defined"), "{stderr}");
    let stderr = env.fails(&env.pack_args("check", "fix.o", "out.hpatch"));
    assert!(stderr.contains("OLD=NEW"), "{stderr}");
    let stderr = env.fails(&env.pack_args("counter=check_v2", "fix.o", "out.hpatch"));
    assert!(stderr.contains("counter") && stderr.contains("not a function"), "{stderr}");
    let mut args = env.pack_args("check=check_v2", "fix.o", "out.hpatch");
    args.extend(["--cve", "CVE-1"]);
    let stderr = env.fails(&args);
    assert!(stderr.contains("\"CVE-1\" is not a CVE id"), "{stderr}");
    let mut args = env.pack_args("check=check_v2", "fix.o", "out.hpatch");
    args[8] = "0";
    let stderr = env.fails(&args);
    assert!(stderr.contains("level must be at least 1"), "{stderr}");
    let mut args = env.pack_args("check=check_v2", "fix.o", "out.hpatch");
    args[12] = "keys/publisher.pub";
    let stderr = env.fails(&args);
    assert!(stderr.contains("publisher.pub") && stderr.contains("hotpatch-secret-key-v1"), "{stderr}");
    let mut args = env.pack_args("check=check_v2", "fix.o", "out.hpatch");
    args[2] = "fix.o";
    let stderr = env.fails(&args);
    assert!(stderr.contains("baseline fix.o"), "{stderr}");
    assert!(!exists(&env.path("out.hpatch")));
}

#[test]
fn verify_with_the_wrong_key_names_the_key() {
    let env = Env::new();
    let key_id = env.keygen("publisher");
    env.ok(&env.pack_args("check=check_v2", "fix.o", "fix.hpatch"));
    std::fs::create_dir(env.path("other")).unwrap();
    let other = env.ok_json(&["keygen", "--out", "other", "--name", "someone"]);
    let other_id = other["key_id"].as_str().unwrap();
    assert_ne!(other_id, key_id);

    let stderr = env.fails(&["verify", "fix.hpatch", "--trust", "other"]);
    assert!(stderr.contains(&key_id), "{stderr}");
    assert!(stderr.contains("not trusted"), "{stderr}");
    assert!(stderr.contains("fix.hpatch failed verification"), "{stderr}");

    // With --json the error is JSON on stdout, still naming the key.
    let out = env.hotpatch(&["--json", "verify", "fix.hpatch", "--trust", "other/someone.pub"]);
    assert_eq!(out.status.code(), Some(1));
    let value: Value = serde_json::from_slice(&out.stdout).expect("--json error is JSON");
    assert!(value["error"].as_str().unwrap().contains(&key_id), "{value}");

    // Trust that cannot be loaded is an error too, not a pass.
    let stderr = env.fails(&["verify", "fix.hpatch", "--trust", "missing-dir"]);
    assert!(stderr.contains("missing-dir"), "{stderr}");
}

#[test]
fn altered_packages_fail_inspect_or_verify() {
    let env = Env::new();
    env.keygen("publisher");
    env.ok(&env.pack_args("check=check_v2", "fix.o", "fix.hpatch"));
    let bytes = std::fs::read(env.path("fix.hpatch")).unwrap();

    // Last byte of the signature: inspect still reads it, verify refuses it.
    let mut altered = bytes.clone();
    *altered.last_mut().unwrap() ^= 1;
    std::fs::write(env.path("sig.hpatch"), &altered).unwrap();
    env.ok(&["inspect", "sig.hpatch"]);
    let stderr = env.fails(&["verify", "sig.hpatch", "--trust", "keys"]);
    assert!(stderr.contains("bad signature"), "{stderr}");

    // Truncated: both refuse it and say so.
    std::fs::write(env.path("short.hpatch"), &bytes[..bytes.len() / 2]).unwrap();
    for cmd in [&["inspect", "short.hpatch"][..], &["verify", "short.hpatch", "--trust", "keys"]] {
        let stderr = env.fails(cmd);
        assert!(stderr.contains("truncated"), "{cmd:?}: {stderr}");
    }

    // Not a package at all.
    let stderr = env.fails(&["inspect", "fix.o"]);
    assert!(stderr.contains("wrong magic"), "{stderr}");
    let stderr = env.fails(&["inspect", "nonexistent.hpatch"]);
    assert!(stderr.contains("cannot read package nonexistent.hpatch"), "{stderr}");
}
