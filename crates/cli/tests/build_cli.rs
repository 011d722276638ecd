//! `hotpatch build` end to end: a service built like a distribution builds
//! it (plain -O2, stripped), a source fix, the hotpatch the builder makes
//! from them, applied to the running service and rolled back; the behaviour
//! is what is checked (see tests/fixtures/patches/README.md).

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Output, Stdio};

const HOTPATCH: &str = env!("CARGO_BIN_EXE_hotpatch");

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn s(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

fn run(cmd: &mut Command) -> Output {
    cmd.output().expect("run command")
}

fn ok(out: Output, what: &str) -> Output {
    assert!(
        out.status.success(),
        "{what} failed\nstdout: {}\nstderr: {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// The service as a distribution ships it: built by plain `make` (with
/// `cflags`), then stripped, in `DIR/installed`.
struct Shipped {
    dir: tempfile::TempDir,
}

impl Shipped {
    fn build(cflags: &str) -> Shipped {
        Shipped::build_with(cflags, &[])
    }

    fn build_with(cflags: &str, make_args: &[&str]) -> Shipped {
        let dir = tempfile::tempdir().unwrap();
        let dist = dir.path().join("dist");
        ok(run(Command::new("cp").arg("-a").arg(fixtures().join("svc")).arg(&dist)), "cp");
        let mut make = Command::new("make");
        make.arg("-s").arg(format!("CFLAGS={cflags}")).args(make_args).current_dir(&dist);
        ok(run(&mut make), "make");
        let installed = dir.path().join("installed");
        std::fs::create_dir(&installed).unwrap();
        for file in ["svc", "libsvc.so"] {
            std::fs::copy(dist.join(file), installed.join(file)).unwrap();
            ok(run(Command::new("strip").arg(installed.join(file))), "strip");
        }
        ok(run(Command::new(HOTPATCH).args(["keygen", "--out"]).arg(dir.path().join("keys"))), "keygen");
        Shipped { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn start(&self) -> Service {
        let mut child = Command::new(self.path("installed/svc"))
            .env("LD_LIBRARY_PATH", self.path("installed"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start svc");
        let stdin = child.stdin.take().unwrap();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        let mut svc = Service { child, stdin, stdout };
        assert_eq!(svc.ask("ping"), "pong");
        svc
    }

    /// `hotpatch build` of fixture patch `name` for `baseline` (a file of `installed/`).
    fn hotpatch_build(&self, name: &str, baseline: &str) -> Output {
        self.hotpatch_build_level(&[name], 1, baseline, name)
    }

    /// `hotpatch apply` of `OUT.hpatch` to the running service, trusting this publisher.
    fn apply(&self, svc: &Service, out: &str) {
        let package = self.path(&format!("{out}.hpatch"));
        let trust = self.path("keys/publisher.pub");
        let mut apply = Command::new(HOTPATCH);
        apply.args(["apply", "--pid", &svc.pid()]).arg(&package).arg("--trust").arg(&trust);
        ok(run(&mut apply), "apply");
    }

    /// A cumulative level: every patch of `names`, in order, into `OUT.hpatch`.
    fn hotpatch_build_level(&self, names: &[&str], level: u32, baseline: &str, out: &str) -> Output {
        let mut cmd = Command::new(HOTPATCH);
        cmd.args(["--json", "build", "--source"]).arg(fixtures().join("svc"));
        for name in names {
            cmd.arg("--patch").arg(fixtures().join(format!("patches/{name}.patch")));
        }
        run(cmd
            .arg("--baseline")
            .arg(self.path("installed").join(baseline))
            .args(["--level", &level.to_string(), "--classification", "security", "--cve", "CVE-2026-0001"])
            .arg("--key")
            .arg(self.path("keys/publisher.key"))
            .arg("-o")
            .arg(self.path(&format!("{out}.hpatch"))))
    }
}

/// The running service; killed when dropped, so no test leaves it behind.
struct Service {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl Service {
    fn ask(&mut self, query: &str) -> String {
        writeln!(self.stdin, "{query}").unwrap();
        self.stdin.flush().unwrap();
        let mut line = String::new();
        self.stdout.read_line(&mut line).unwrap();
        line.trim_end().to_owned()
    }

    fn pid(&self) -> String {
        self.child.id().to_string()
    }

    /// Runs `NAME-LOADED.test`; the first line whose answer differs, if any.
    fn loaded_test(&mut self, name: &str) -> Result<(), String> {
        let text = std::fs::read_to_string(fixtures().join(format!("patches/{name}-LOADED.test"))).unwrap();
        for line in text.lines().filter(|l| !l.starts_with('#') && !l.trim().is_empty()) {
            let (query, want) = line.split_once(" => ").expect("INPUT => ANSWER");
            let got = self.ask(query);
            if got != want {
                return Err(format!("{query:?} answered {got:?}, the fix answers {want:?}"));
            }
        }
        Ok(())
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn json(out: &Output) -> serde_json::Value {
    serde_json::from_slice(&out.stdout).expect("json output")
}

/// Builds, applies and rolls back fixture `name`; returns the build's JSON.
fn patch_case(name: &str, baseline: &str) -> serde_json::Value {
    let shipped = Shipped::build("-O2 -g");
    let mut svc = shipped.start();
    assert!(svc.loaded_test(name).is_err(), "{name}: the fix's answers before the fix");
    let built = ok(shipped.hotpatch_build(name, baseline), "hotpatch build");
    let report = json(&built);
    shipped.apply(&svc, name);
    if let Err(e) = svc.loaded_test(name) {
        panic!("{name}: applied, but the behaviour is not fixed: {e}\nbuild: {report:#}");
    }
    ok(run(Command::new(HOTPATCH).args(["rollback", "--pid", &svc.pid()])), "rollback");
    assert!(svc.loaded_test(name).is_err(), "{name}: the fix's answers after the rollback");
    assert_eq!(svc.ask("ping"), "pong");
    report
}

#[test]
fn cumulative_levels_replace_each_other() {
    let shipped = Shipped::build("-O2 -g");
    let mut svc = shipped.start();
    ok(shipped.hotpatch_build_level(&["bounds"], 1, "svc", "level1"), "build level 1");
    ok(shipped.hotpatch_build_level(&["bounds", "string"], 2, "svc", "level2"), "build level 2");
    for level in ["level1", "level2"] {
        shipped.apply(&svc, level);
        assert_eq!(svc.loaded_test("bounds"), Ok(()), "{level} carries the bounds fix");
    }
    assert_eq!(svc.loaded_test("string"), Ok(()), "level 2 adds the string fix");
    ok(run(Command::new(HOTPATCH).args(["rollback", "--pid", &svc.pid()])), "rollback");
    assert!(svc.loaded_test("bounds").is_err() && svc.loaded_test("string").is_err(), "back to the baseline");
}

fn in_patch(report: &serde_json::Value) -> Vec<(String, String)> {
    report["explain"]["functions"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["in_patch"] == true)
        .map(|f| (f["name"].as_str().unwrap().to_owned(), f["reasons"].to_string()))
        .collect()
}

fn sites(report: &serde_json::Value) -> Vec<String> {
    report["manifest"]["functions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["symbol"].as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn bounds_check_fix() {
    let report = patch_case("bounds", "svc");
    assert_eq!(sites(&report), ["copy_field"]);
    // Stripped baseline: every site carries its proven address.
    assert!(report["manifest"]["functions"][0]["address"].is_u64());
    assert_eq!(report["explain"]["symbols"]["kind"], "reference");
}

#[test]
fn string_constant_fix() {
    let report = patch_case("string", "svc");
    assert_eq!(sites(&report), ["greet"]);
}

#[test]
fn static_counter_keeps_its_state() {
    let report = patch_case("counter", "svc");
    assert_eq!(sites(&report), ["count_calls"]);
    let bound: Vec<String> = report["manifest"]["symbols"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap().to_owned())
        .collect();
    assert!(bound.iter().any(|n| n.starts_with("parse.c:calls")), "counter bound to the baseline's storage: {bound:?}");
}

#[test]
fn state_the_layout_has_no_room_for_goes_in_a_shadow_variable() {
    // layout-FAIL grows `history` and is refused; this fix keeps its count
    // beside the array instead, and sets it from a post-apply callback.
    let report = patch_case("shadow", "svc");
    let mut patched = sites(&report);
    patched.sort();
    assert_eq!(patched, ["check_b", "recent_digits"]);
    let functions: Vec<(String, String)> = in_patch(&report);
    assert!(
        functions.iter().any(|(name, _)| name == "hotpatch_post_apply"),
        "callback not in the patch: {functions:?}"
    );
}

#[test]
fn inlined_helper_patches_its_callers() {
    let report = patch_case("inlined", "svc");
    let mut patched = sites(&report);
    patched.sort();
    assert_eq!(patched, ["len_a", "len_b"]);
    let reasons = in_patch(&report);
    assert!(reasons.iter().all(|(_, why)| why.contains("inlines changed valid_len")), "{reasons:?}");
}

#[test]
fn static_function_whose_name_two_files_have() {
    let report = patch_case("static-twice", "svc");
    assert!(sites(&report).contains(&"check_b".to_owned()));
    assert!(!sites(&report).contains(&"check_a".to_owned()), "parse.c's check is another function");
}

#[test]
fn fix_that_adds_a_helper() {
    let report = patch_case("helper", "svc");
    let reasons = in_patch(&report);
    assert!(reasons.iter().any(|(n, why)| n == "only_ascii" && why.contains("new")), "{reasons:?}");
    assert_eq!(sites(&report), ["check_a"], "a new function needs no site");
}

#[test]
fn callee_register_use_changes_under_ipa_ra() {
    let report = patch_case("ipa-ra", "svc");
    let patched = sites(&report);
    assert!(patched.contains(&"scale".to_owned()), "{patched:?}");
    // gcc -O2 let sum_scaled keep values in registers scale left alone; the
    // fixed scale calls cap(), so sum_scaled's code changed and is patched.
    let reasons = in_patch(&report);
    assert!(
        reasons.iter().any(|(n, why)| n == "sum_scaled" && why.contains("register use")),
        "the caller relying on -fipa-ra is patched: {reasons:?}"
    );
}

#[test]
fn shared_library_fix() {
    let report = patch_case("library", "libsvc.so");
    assert_eq!(sites(&report), ["lib_parse"]);
}

/// What a failed command said, on either stream (`--json` puts the error on stdout).
fn said(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

/// Fixture `name` built against `baseline` shipped with another page size:
/// every address moves, so the builder's own link cannot lend its symbols
/// and run-pre must locate them (`dynsym`); patched at `site` and fixed.
fn patched_where_the_link_lends_no_symbols(name: &str, baseline: &str, site: &str) {
    let shipped = Shipped::build_with("-O2 -g", &["LDFLAGS=-Wl,-z,max-page-size=0x10000"]);
    let mut svc = shipped.start();
    assert!(svc.loaded_test(name).is_err());
    let report = json(&ok(shipped.hotpatch_build(name, baseline), "hotpatch build"));
    assert_eq!(report["explain"]["symbols"]["kind"], "dynsym", "{report:#}");
    assert_eq!(sites(&report), [site]);
    shipped.apply(&svc, name);
    assert_eq!(svc.loaded_test(name), Ok(()));
}

#[test]
fn stripped_baseline_linked_unlike_the_builder_is_located_by_run_pre() {
    // The static helper is found where the exported lib_parse, matched byte
    // for byte, calls it.
    patched_where_the_link_lends_no_symbols("library-static", "libsvc.so", "digit");
}

#[test]
fn stripped_executable_linked_unlike_the_builder_is_located_from_its_entry_point() {
    // The executable exports nothing of its own: the run-pre match starts at
    // main, which the entry point hands to __libc_start_main, and follows
    // the calls it proves (main -> dispatch -> copy_field).
    patched_where_the_link_lends_no_symbols("bounds", "svc", "copy_field");
}

#[test]
fn a_function_built_differently_is_tolerated_only_when_unrelated_to_the_fix() {
    // The distribution branded lib_version: its code differs from the
    // builder's build, but the fix of digit neither calls nor is called by it.
    let shipped = Shipped::build("-O2 -g -DSHIP_BRAND=1");
    let mut svc = shipped.start();
    let report = json(&ok(shipped.hotpatch_build("library-static", "libsvc.so"), "hotpatch build"));
    assert_eq!(sites(&report), ["digit"]);
    let notes = report["explain"]["notes"].to_string();
    assert!(notes.contains("lib_version") && notes.contains("neither replaces, calls nor is called by it"), "{notes}");
    shipped.apply(&svc, "library-static");
    assert_eq!(svc.loaded_test("library-static"), Ok(()));

    // The distribution changed lib_parse, which calls digit: its copy may
    // have inlined digit or rely on its register use, so no hotpatch.
    let shipped = Shipped::build("-O2 -g -DSHIP_PARSE");
    let out = shipped.hotpatch_build("library-static", "libsvc.so");
    assert!(!out.status.success(), "built although lib_parse, digit's caller, differs");
    let said = said(&out);
    assert!(said.contains("is not the baseline's code") && said.contains("lib_parse"), "{said}");
}

fn refused(name: &str) {
    refused_for(name, "svc");
}

fn refused_for(name: &str, baseline: &str) {
    let shipped = Shipped::build("-O2 -g");
    let mut svc = shipped.start();
    let out = shipped.hotpatch_build(name, baseline);
    assert!(!out.status.success(), "{name} was built");
    let reason = std::fs::read_to_string(fixtures().join(format!("patches/{name}.reason"))).unwrap();
    let said = said(&out);
    for line in reason.lines().filter(|l| !l.trim().is_empty()) {
        assert!(said.contains(line.trim()), "{name}: {said}");
    }
    assert!(!shipped.path(&format!("{name}.hpatch")).exists(), "no package written");
    assert_eq!(svc.ask("ping"), "pong");
}

#[test]
fn data_layout_change_is_refused() {
    refused("layout-FAIL");
}

#[test]
fn initial_value_change_is_refused() {
    refused("initial-FAIL");
}

/// Programs linked against the library keep calling the export with one
/// argument; the DWARF of the two builds shows the second.
#[test]
fn changed_signature_of_an_export_is_refused() {
    refused_for("signature-FAIL", "libsvc.so");
}

#[test]
fn changed_inline_assembly_is_refused() {
    refused("asm-FAIL");
}

/// A callback gets one more argument: a caller through the table of
/// pointers would still pass one, so the table is reason enough.
#[test]
fn changed_signature_of_a_function_called_through_a_pointer_is_refused() {
    refused("pointer-FAIL");
}

/// A file-local function that takes one more argument, called only by a
/// function the patch replaces: nothing left running calls it the old way.
#[test]
fn changed_signature_with_every_caller_replaced_is_patched() {
    let report = patch_case("library-signature", "libsvc.so");
    let mut patched = sites(&report);
    patched.sort();
    assert!(patched.contains(&"lib_parse".to_owned()), "{patched:?}");
}

/// A replaced function reading a thread-local variable of the stripped
/// executable (local-exec, `%fs:` relative): the payload reaches the
/// process's own variable: what the original code stored, the replacement reads.
#[test]
fn fix_in_a_function_using_thread_local_storage() {
    let report = patch_case("tls", "svc");
    assert!(sites(&report).iter().any(|s| s == "tls_get" || s == "tls_command"), "{report:#}");
}

/// The same in a shared library (local-dynamic: `__tls_get_addr` with the
/// library's module id, read from its own GOT in the process).
#[test]
fn library_fix_in_a_function_using_thread_local_storage() {
    let report = patch_case("library-tls", "libsvc.so");
    assert!(sites(&report).contains(&"lib_tls".to_owned()), "{report:#}");
}

#[test]
fn thread_local_variable_the_fix_adds_is_refused() {
    refused("tls-new-FAIL");
}

/// A fix that adds a source file: what the replaced code calls from it, its
/// own data and its callback go into the patch; what nothing reaches stays out.
#[test]
fn fix_that_adds_a_source_file() {
    let report = patch_case("new-file", "svc");
    let notes = report["explain"]["notes"].to_string();
    let taken = notes.split("extra.o is a file the fix adds; the patch takes ").nth(1).unwrap_or("");
    let taken = taken.split('"').next().unwrap_or("");
    for name in ["clamp_digits", "clamped_times", "hotpatch_post_apply"] {
        assert!(taken.contains(name), "{name} not taken: {notes}");
    }
    assert!(!taken.contains("clamp_limit"), "nothing calls clamp_limit: {notes}");
}

/// A new file-local variable written by an instruction with an immediate
/// after its PC-relative field (`addl $1, x(%rip)`): the field's addend is
/// -5, not -4, and the write must reach the new variable in the payload.
#[test]
fn new_static_written_through_an_instruction_with_an_immediate() {
    patch_case("new-static", "svc");
}

/// Without `-g` (no DWARF in either build) the added parameter of the
/// export is seen from the code: the new code reads an argument register
/// the original never read.
#[test]
fn changed_signature_without_debug_information_is_refused() {
    let shipped = Shipped::build("-O2");
    let mut cmd = Command::new(HOTPATCH);
    cmd.args(["--json", "build", "--source"]).arg(fixtures().join("svc"));
    cmd.arg("--patch").arg(fixtures().join("patches/signature-FAIL.patch"));
    cmd.args(["--command", "make CFLAGS=-O2", "--baseline"]).arg(shipped.path("installed/libsvc.so"));
    cmd.args(["--level", "1", "--classification", "security", "--key"]).arg(shipped.path("keys/publisher.key"));
    let out = run(cmd.arg("-o").arg(shipped.path("nodebug.hpatch")));
    let said = said(&out);
    assert!(!out.status.success(), "built: {said}");
    assert!(said.contains("the signature of lib_parse in lib.o changed (reads %rdi became reads %rdi %rsi"), "{said}");
    assert!(said.contains("no debug information") && said.contains("exported"), "{said}");
}

#[test]
fn baseline_of_another_toolchain_is_refused() {
    // Shipped with -O1: the builder's -O2 build is not the same code.
    let shipped = Shipped::build("-O1 -g");
    let out = shipped.hotpatch_build("bounds", "svc");
    assert!(!out.status.success(), "built against a baseline of other flags");
    let said = said(&out);
    assert!(said.contains("is not the baseline's code"), "{said}");
    assert!(said.contains("differs at offset 0x"), "names the first differing offset: {said}");
    assert!(said.contains("compilers of the baseline: GCC"), "names the compilers: {said}");
}

#[test]
fn objects_without_function_sections_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let shipped = Shipped::build("-O2 -g");
    for tree in ["old", "new"] {
        let d = dir.path().join(tree);
        ok(run(Command::new("cp").arg("-a").arg(fixtures().join("svc")).arg(&d)), "cp");
        if tree == "new" {
            ok(
                run(Command::new("patch")
                    .args(["-p1", "-s", "-i"])
                    .arg(fixtures().join("patches/bounds.patch"))
                    .current_dir(&d)),
                "patch",
            );
        }
        ok(run(Command::new("make").arg("-s").current_dir(&d)), "make");
    }
    let out = run(Command::new(HOTPATCH)
        .args(["build", "--old-objects"])
        .arg(dir.path().join("old"))
        .arg("--new-objects")
        .arg(dir.path().join("new"))
        .arg("--baseline")
        .arg(shipped.path("installed/svc"))
        .args(["--level", "1", "--classification", "security", "--key"])
        .arg(shipped.path("keys/publisher.key"))
        .arg("-o")
        .arg(dir.path().join("x.hpatch")));
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("-ffunction-sections"), "{}", s(dir.path()));
}

/// With two jobs or more the original and fixed builds run at once, each in
/// its own mount namespace at the one path; the hotpatch is the one the
/// builds made in turn give, site for site and byte for byte.
#[test]
fn builds_at_once_make_the_same_hotpatch_as_builds_in_turn() {
    let shipped = Shipped::build("-O2");
    let build = |jobs: &str, out: &str| {
        let mut cmd = Command::new(HOTPATCH);
        cmd.args(["--json", "build", "--jobs", jobs, "--source"]).arg(fixtures().join("svc"));
        cmd.arg("--patch").arg(fixtures().join("patches/bounds.patch"));
        let output = ok(
            run(cmd
                .arg("--baseline")
                .arg(shipped.path("installed/svc"))
                .args(["--level", "1", "--classification", "security"])
                .arg("--key")
                .arg(shipped.path("keys/publisher.key"))
                .arg("-o")
                .arg(shipped.path(out))),
            "build",
        );
        let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
        (report, String::from_utf8_lossy(&output.stderr).into_owned())
    };
    let (in_turn, log_in_turn) = build("1", "in-turn.hpatch");
    let (at_once, log_at_once) = build("4", "at-once.hpatch");
    assert!(!log_in_turn.contains("run at once"), "{log_in_turn}");
    assert!(log_at_once.contains("the two builds run at once, 2 job(s) each"), "{log_at_once}");
    assert_eq!(in_turn["manifest"]["functions"], at_once["manifest"]["functions"]);
    assert_eq!(in_turn["manifest"]["symbols"], at_once["manifest"]["symbols"]);
    assert_eq!(in_turn["manifest"]["payload_sha256"], at_once["manifest"]["payload_sha256"]);
}

/// A tree that also builds another variant of a file (gcov, a debug build)
/// whose own object the fix leaves unchanged: the variant differs between
/// the builds (its stamp) and matches the baseline in one function of
/// three. It is not the baseline's file, so its data is not the baseline's
/// either, and the fix of another file builds.
#[test]
fn a_variant_of_an_unchanged_file_is_not_taken_for_the_baseline() {
    let dir = tempfile::tempdir().unwrap();
    let shipped = Shipped::build("-O2 -g");
    let util = std::fs::read_to_string(fixtures().join("svc/util.c")).unwrap();
    // cap as shipped; check_b and recent_digits compiled otherwise.
    let variant = util.replace("history[next++ % 4] = d;", "history[next++ % 4] = d + 1;").replace(
        "return history[0] + history[1] + history[2] + history[3];",
        "return history[0] ^ history[1] ^ history[2] ^ history[3];",
    );
    for (n, tree) in ["old", "new"].into_iter().enumerate() {
        let d = dir.path().join(tree);
        ok(run(Command::new("cp").arg("-a").arg(fixtures().join("svc")).arg(&d)), "cp");
        if tree == "new" {
            let mut patch = Command::new("patch");
            patch.args(["-p1", "-s", "-i"]).arg(fixtures().join("patches/bounds.patch")).current_dir(&d);
            ok(run(&mut patch), "patch");
        }
        ok(run(Command::new("make").arg("-s").arg("CFLAGS=-O2 -g -ffunction-sections").current_dir(&d)), "make");
        let v = d.join("variant");
        std::fs::create_dir(&v).unwrap();
        std::fs::copy(d.join("svc.h"), v.join("svc.h")).unwrap();
        std::fs::write(v.join("util.c"), format!("{variant}\nint variant_stamp = {n};\n")).unwrap();
        let mut gcc = Command::new("gcc");
        gcc.args(["-O2", "-g", "-ffunction-sections", "-c", "util.c", "-o", "util-variant.o"]).current_dir(&v);
        ok(run(&mut gcc), "gcc variant");
    }
    let out = run(Command::new(HOTPATCH)
        .args(["--json", "build", "--old-objects"])
        .arg(dir.path().join("old"))
        .arg("--new-objects")
        .arg(dir.path().join("new"))
        .arg("--baseline")
        .arg(shipped.path("installed/svc"))
        .args(["--level", "1", "--classification", "security", "--key"])
        .arg(shipped.path("keys/publisher.key"))
        .arg("-o")
        .arg(dir.path().join("x.hpatch")));
    let report = json(&ok(out, "hotpatch build"));
    assert_eq!(sites(&report), ["copy_field"]);
    let variant =
        report["explain"]["objects"].as_array().unwrap().iter().find(|o| o["path"] == "variant/util-variant.o");
    let variant = variant.expect("the variant was compared");
    assert_eq!(variant["in_baseline"], false, "{variant}");
    assert_eq!(variant["matched"], 1, "{variant}");
}
