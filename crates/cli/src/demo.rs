//! `hotpatch demo`: the whole product in one command. Builds a small service
//! with a "vulnerable" function, starts it, makes and signs a hotpatch, applies
//! it live, shows the service's answer change without a restart, rolls back.

use crate::output::Output;
use anyhow::{Context, bail};
use hotpatch_build::{PackRequest, manifest_for, parse_replacement};
use hotpatch_format::{Classification, Package, SecretKey, TrustStore};
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

const SERVICE: &str = r#"
#include <stdio.h>
#include <string.h>
#include <unistd.h>
/* The bug: any password that starts with "let" is accepted. */
__attribute__((noinline)) int check_password(const char *given) {
    return strncmp(given, "letmein", 3) == 0;
}
int main(void) {
    setvbuf(stdout, NULL, _IOLBF, 0);
    for (unsigned i = 0;; i++) {
        printf("request %u: password \"letter\" -> %s\n", i, check_password("letter") ? "ACCEPTED" : "refused");
        usleep(200000);
    }
}
"#;

const FIX: &str = r#"
#include <string.h>
int check_password_fixed(const char *given) { return strcmp(given, "letmein") == 0; }
"#;

struct Service(std::process::Child);
impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn gcc(dir: &std::path::Path, args: &[&str]) -> anyhow::Result<()> {
    let out =
        Command::new("gcc").args(args).current_dir(dir).output().context("cannot run gcc (apt-get install gcc)")?;
    if !out.status.success() {
        bail!("gcc {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

pub fn demo(out: &Output) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let d = dir.path();
    std::fs::write(d.join("service.c"), SERVICE)?;
    std::fs::write(d.join("fix.c"), FIX)?;
    println!("{} building a sample service and its fix with gcc in {}", out.bold("1."), d.display());
    // -fno-ipa-ra: without it gcc may let a caller keep values in registers
    // the old callee happened not to touch, which no replacement can honour.
    // Baselines meant for hotpatching are built this way (as for kernel livepatch).
    gcc(d, &["-O2", "-fno-ipa-ra", "-g", "-o", "service", "service.c"])?;
    gcc(d, &["-c", "-fPIC", "-O2", "fix.c"])?;

    println!("{} signing a hotpatch for the running build (fresh publisher key)", out.bold("2."));
    let key = SecretKey::generate()?;
    let baseline = std::fs::read(d.join("service"))?;
    let payload = std::fs::read(d.join("fix.o"))?;
    let manifest = manifest_for(&PackRequest {
        baseline: &baseline,
        baseline_name: "service".into(),
        debug_file: None,
        payload: &payload,
        replacements: vec![parse_replacement("check_password=check_password_fixed")?],
        patch_id: Some("demo-auth-fix".into()),
        product: "demo-service".into(),
        level: 1,
        classification: Classification::Security,
        cves: vec!["CVE-2026-0001".into()],
        description: "check_password compared only 3 characters".into(),
        created: jiff::Timestamp::now().round(jiff::Unit::Second)?.to_string(),
        allow_ipa_ra: false,
    })?;
    let bytes = Package::build(manifest, &payload, &key)?;
    let package = hotpatch_format::verify(&bytes, &TrustStore::from_keys([key.public()]))?;

    println!("{} starting the service", out.bold("3."));
    let mut child = Command::new(d.join("service")).stdout(Stdio::piped()).spawn()?;
    let stdout = child.stdout.take().context("service stdout")?;
    let service = Service(child);
    let pid = service.0.id() as i32;
    let mut lines = BufReader::new(stdout).lines();
    let mut show = |n: usize| -> anyhow::Result<()> {
        for _ in 0..n {
            let line = lines.next().context("service stopped")??;
            println!("   [pid {pid}] {line}");
        }
        Ok(())
    };
    show(3)?;

    println!("{} applying the hotpatch to the running process (no restart)", out.bold("4."));
    let opts = hotpatch_engine::ApplyOptions { timeout: Duration::from_secs(10), ..Default::default() };
    let report = hotpatch_engine::apply(pid, &package, &opts)?;
    println!(
        "   {} {} in {} µs of pause ({} thread), region at 0x{:x}",
        out.good("applied"),
        report.patch_id,
        report.pause_us,
        report.threads,
        report.region_start
    );
    show(4)?;

    println!("{} rolling back", out.bold("5."));
    let back = hotpatch_engine::rollback(pid, None, &opts)?;
    println!("   {} in {} µs of pause", out.good("rolled back"), back.pause_us);
    show(3)?;
    println!("{} the service ran the whole time as pid {pid}; stopping it now.", out.good("done:"));
    drop(service);
    Ok(())
}
