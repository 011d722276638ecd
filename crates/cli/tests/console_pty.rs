//! `hotpatch console` driven through a pseudo-terminal as an operator would:
//! readiness, scan, apply pending (a real process gets patched), status, roll
//! back (it is restored), a setting changed, a wrong entry, exit.

mod common;

use std::io::{Read, Write};
use std::os::fd::{FromRawFd, OwnedFd};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;

struct Pty {
    master: std::fs::File,
    seen: Arc<Mutex<String>>,
    /// How much of `seen` earlier expectations consumed.
    mark: usize,
}

fn openpty() -> (OwnedFd, OwnedFd) {
    let (mut master, mut slave) = (-1, -1);
    // SAFETY: openpty fills two descriptors we then own.
    let rc =
        unsafe { libc::openpty(&mut master, &mut slave, std::ptr::null_mut(), std::ptr::null(), std::ptr::null()) };
    assert_eq!(rc, 0, "openpty");
    // SAFETY: both descriptors were just opened and are owned by nobody else.
    unsafe { (OwnedFd::from_raw_fd(master), OwnedFd::from_raw_fd(slave)) }
}

impl Pty {
    fn spawn(args: &[&str]) -> (Pty, std::process::Child) {
        let (master, slave) = openpty();
        let child = Command::new(HOTPATCH)
            .args(args)
            .env("NO_COLOR", "1")
            .stdin(Stdio::from(slave.try_clone().expect("dup")))
            .stdout(Stdio::from(slave.try_clone().expect("dup")))
            .stderr(Stdio::from(slave))
            .spawn()
            .expect("start console");
        let master = std::fs::File::from(master);
        let seen = Arc::new(Mutex::new(String::new()));
        let (mut reader, sink) = (master.try_clone().expect("dup"), seen.clone());
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            // Ends with EIO once the console has exited and the terminal is closed.
            while let Ok(n) = reader.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock().expect("lock").push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        (Pty { master, seen, mark: 0 }, child)
    }

    /// Waits (bounded) for `text` in what the console printed since the last expectation.
    fn expect(&mut self, text: &str) {
        for _ in 0..600 {
            let seen = self.seen.lock().expect("lock").clone();
            if let Some(at) = seen[self.mark..].find(text) {
                self.mark += at + text.len();
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("console never printed {text:?}; it printed:\n{}", self.seen.lock().expect("lock"));
    }

    fn type_line(&mut self, line: &str) {
        self.master.write_all(format!("{line}\n").as_bytes()).expect("type");
    }
}

#[test]
fn an_operator_applies_and_rolls_back_through_the_console() {
    let f = Fixture::new();
    let catalog = f.path("catalog");
    std::fs::create_dir(&catalog).expect("mkdir");
    f.pack(&f.path("svc"), 1, &catalog.join("svc-1.hpatch"));
    let cfg = f.path("agent.toml");
    let text = format!(
        "state_dir = {:?}\ntrust_dir = {:?}\ncatalog_dir = {:?}\n",
        s(&f.path("state")),
        f.trust(),
        s(&catalog)
    );
    write_config(&cfg, &text);
    let svc = Svc::start(&f.path("svc"));

    let (mut pty, mut child) = Pty::spawn(&["console", "--config", &s(&cfg)]);
    pty.expect("Choose [0-7]: ");
    pty.type_line("2");
    pty.expect("ready for hotpatching");
    pty.type_line("3");
    pty.expect("hotpatch level 1 available (no restart)");
    pty.type_line("4");
    pty.expect("Apply 1 hotpatch(es) now");
    pty.type_line("y");
    pty.expect(&format!("applied {} (svc)", svc.pid()));
    assert!(svc.wait_for(LEVEL1), "the console's apply did not reach the process");
    pty.type_line("1");
    pty.expect("active");
    pty.type_line("5");
    pty.expect("Roll back which");
    pty.type_line("1");
    // The success line only: "nothing rolled back" must not pass for it.
    pty.expect("rolled back");
    pty.expect(&format!(" in {} (pause", svc.pid()));
    assert!(svc.wait_for(UNPATCHED), "the console's rollback did not reach the process");
    pty.type_line("7");
    pty.expect("Change which");
    pty.type_line("1");
    pty.expect("Seconds: ");
    pty.type_line("120");
    pty.expect("saved");
    // Enrollment with a control plane (a stand-in on loopback).
    let (base, _checkins, _) = common::control_plane::control_plane(&f);
    pty.type_line("6");
    pty.expect("not enrolled");
    pty.expect("Server URL");
    pty.type_line(&base);
    pty.expect("Enrollment token: ");
    pty.type_line("token");
    pty.expect("enrolled as machine m-test");
    pty.type_line("9");
    pty.expect("no entry \"9\"");
    pty.type_line("0");
    let mut status = None;
    for _ in 0..600 {
        status = child.try_wait().expect("try_wait");
        if status.is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = child.kill();
    assert!(status.is_some_and(|s| s.success()), "console did not exit cleanly: {status:?}");
    let saved = std::fs::read_to_string(&cfg).expect("config");
    assert!(saved.contains("check_in_seconds = 120"), "{saved}");
    hotpatch_agent::config::Config::load(&cfg, true).expect("the saved settings load");
}
