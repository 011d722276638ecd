//! A tracer that dies while it borrows a thread for an injected syscall: the
//! thread must come back by itself to where it was, with every register,
//! and a syscall it was blocked in re-issued. The tracer here is a thread of
//! the test that ends without restoring anything: the kernel detaches its
//! tracees exactly as when a killed `hotpatch apply` exits.

mod common;

use common::*;
use hotpatch_engine::inject::{Abandon, Injector};
use hotpatch_engine::procfs::{self, ProcessMemory};

/// `READ` set: the main thread blocks in read() on stdin and echoes each line.
/// Else: the main thread spins in a loop holding known values in every
/// register (flags included) and checks them at the end of each round.
const FIXTURE: &str = r#"
#include <stdio.h>
#include <stdlib.h>
static long registers_changed(void) {
    long bad;
    __asm__ volatile(
        "mov $11, %%rbx\n\t mov $12, %%rsi\n\t mov $13, %%rdi\n\t mov $14, %%r8\n\t"
        "mov $15, %%r9\n\t mov $16, %%r10\n\t mov $17, %%r11\n\t mov $18, %%r12\n\t"
        "mov $19, %%r13\n\t mov $20, %%r14\n\t mov $21, %%r15\n\t mov $22, %%rdx\n\t"
        "mov $2000000, %%rcx\n\t"
        "1: dec %%rcx\n\t jnz 1b\n\t"
        "mov $1, %%eax\n\t"
        "cmp $11, %%rbx\n\t jne 2f\n\t cmp $12, %%rsi\n\t jne 2f\n\t cmp $13, %%rdi\n\t jne 2f\n\t"
        "cmp $14, %%r8\n\t jne 2f\n\t cmp $15, %%r9\n\t jne 2f\n\t cmp $16, %%r10\n\t jne 2f\n\t"
        "cmp $17, %%r11\n\t jne 2f\n\t cmp $18, %%r12\n\t jne 2f\n\t cmp $19, %%r13\n\t jne 2f\n\t"
        "cmp $20, %%r14\n\t jne 2f\n\t cmp $21, %%r15\n\t jne 2f\n\t cmp $22, %%rdx\n\t jne 2f\n\t"
        "xor %%eax, %%eax\n\t"
        "2:\n\t"
        : "=a"(bad)
        :
        : "rbx", "rcx", "rdx", "rsi", "rdi", "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15", "cc", "memory");
    return bad;
}
int main(void) {
    setvbuf(stdout, 0, _IOLBF, 0);
    puts("ready");
    if (getenv("READ")) {
        char line[256];
        while (fgets(line, sizeof line, stdin)) printf("echo %s", line);
        return 0;
    }
    for (unsigned long n = 1;; n++) {
        if (registers_changed()) puts("FAIL registers changed under the spinning loop");
        if (n % 16 == 0) printf("spin %lu\n", n);
    }
}
"#;

const GETPPID: i64 = 110;
const STEPS: [Abandon; 3] = [Abandon::RegistersSet, Abandon::AtEntry, Abandon::AtExit];

fn fixture(dir: &Dir) -> std::path::PathBuf {
    dir.write("borrowed.c", FIXTURE);
    dir.gcc(&["-O1", "-o", "borrowed", "borrowed.c"]);
    dir.path("borrowed")
}

/// Borrows a thread of `pid`, starts getppid() in it and ends the tracing
/// thread at `at`.
fn die_while_borrowing(pid: i32, at: Abandon) {
    std::thread::spawn(move || {
        let mem = ProcessMemory::open(pid, true).expect("open memory");
        let maps = procfs::maps(pid).expect("maps");
        let inj = Injector::attach(pid, &maps, &mem).expect("borrow a thread");
        inj.abandon_during(GETPPID, [0; 6], at).expect("start the syscall");
    })
    .join()
    .expect("tracer thread");
}

fn assert_untraced(pid: i32) {
    assert_eq!(procfs::tracer_of(pid), Some(0), "the process is still traced");
}

#[test]
fn a_thread_blocked_in_read_resumes_its_read_when_the_tracer_dies() {
    let dir = Dir::new();
    let mut p = Proc::spawn_driven(&fixture(&dir), &[("READ", "1")]);
    p.expect_line("ready", 1);
    for round in 0..4 {
        for at in STEPS {
            die_while_borrowing(p.pid(), at);
            assert!(p.alive(), "round {round}: the process died after a tracer died at {at:?}");
            assert_untraced(p.pid());
            // The read was re-issued: the next line is read and echoed.
            p.send(&format!("line {round} {at:?}"));
            p.expect_line(&format!("echo line {round} {at:?}"), 1);
        }
    }
}

#[test]
fn a_spinning_thread_keeps_every_register_when_the_tracer_dies() {
    let dir = Dir::new();
    let mut p = Proc::spawn(&fixture(&dir), &[]);
    p.expect_line("ready", 1);
    for round in 0..6 {
        for at in STEPS {
            die_while_borrowing(p.pid(), at);
            assert!(p.alive(), "round {round}: the process died after a tracer died at {at:?}");
            assert_untraced(p.pid());
            let lines = p.drain();
            assert!(lines.iter().all(|l| !l.starts_with("FAIL")), "round {round} at {at:?}: {lines:?}");
            assert!(lines.iter().any(|l| l.starts_with("spin")), "round {round} at {at:?}: no progress: {lines:?}");
        }
    }
}

#[test]
fn a_borrowed_thread_is_given_back_exactly_when_the_tracer_lives() {
    let dir = Dir::new();
    let mut p = Proc::spawn_driven(&fixture(&dir), &[("READ", "1")]);
    p.expect_line("ready", 1);
    let mem = ProcessMemory::open(p.pid(), true).expect("open memory");
    let maps = procfs::maps(p.pid()).expect("maps");
    let mut inj = Injector::attach(p.pid(), &maps, &mem).expect("borrow a thread");
    let parent = inj.syscall(GETPPID, [0; 6]).expect("getppid");
    assert_eq!(parent, std::process::id() as i64, "getppid ran in the target");
    inj.finish().expect("give the thread back");
    assert_untraced(p.pid());
    p.send("after");
    p.expect_line("echo after", 1);
}
