//! `hotpatch agent` as a daemon with a local catalog directory, on real
//! processes: every process mapping the target is patched, also one started
//! later; SIGHUP reloads (a higher level reaches them all); SIGTERM stops it;
//! the journal holds an intent and an outcome for every process touched.

mod common;

use common::*;

fn config(f: &Fixture, catalog: &std::path::Path) -> std::path::PathBuf {
    let path = f.path("agent.toml");
    let text = format!(
        "state_dir = {:?}\ntrust_dir = {:?}\ncatalog_dir = {:?}\nrescan_seconds = 0.2\napply_timeout_seconds = 5\n",
        s(&f.path("state")),
        f.trust(),
        s(catalog)
    );
    write_config(&path, &text);
    path
}

#[test]
fn the_daemon_patches_every_process_also_later_ones_reloads_on_sighup_and_stops_on_sigterm() {
    let f = Fixture::new();
    let catalog = f.path("catalog");
    std::fs::create_dir(&catalog).expect("mkdir");
    f.pack(&f.path("svc"), 1, &catalog.join("svc-1.hpatch"));
    let cfg = config(&f, &catalog);
    let early: Vec<Svc> = (0..3).map(|_| Svc::start(&f.path("svc"))).collect();
    let mut agent = Agent::start(&cfg, &f.path("agent.log"));
    for svc in &early {
        assert!(svc.wait_for(LEVEL1), "process {} not patched; log:\n{}", svc.pid(), agent.log_text());
    }
    let late = Svc::spawn(std::process::Command::new(f.path("svc")));
    assert!(late.wait_for(LEVEL1), "a process started later was not patched; log:\n{}", agent.log_text());

    // A higher level in the catalog, and SIGHUP: it replaces level 1 everywhere.
    f.pack(&f.path("svc"), 2, &catalog.join("svc-2.hpatch"));
    agent.signal(libc::SIGHUP);
    for svc in early.iter().chain([&late]) {
        assert!(svc.wait_for(LEVEL2), "process {} not at level 2; log:\n{}", svc.pid(), agent.log_text());
    }

    // A broken configuration on SIGHUP is refused; the running one stays.
    write_config(&cfg, "rescan_seconds = \"often\"\n");
    agent.signal(libc::SIGHUP);
    for _ in 0..600 {
        if agent.log_text().contains("configuration not reloaded") {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert!(agent.log_text().contains("configuration not reloaded"), "{}", agent.log_text());

    agent.signal(libc::SIGTERM);
    assert_eq!(agent.wait_exit(), Some(0), "log:\n{}", agent.log_text());
    let log = agent.log_text();
    assert!(log.contains("configuration reloaded") && log.contains("agent stopped"), "{log}");

    let journal = std::fs::read_to_string(f.path("state/journal.jsonl")).expect("journal");
    let intents = journal.lines().filter(|l| l.starts_with("{\"intent\"")).count();
    let outcomes = journal.lines().filter(|l| l.starts_with("{\"outcome\"")).count();
    assert_eq!((intents, outcomes), (8, 8), "{journal}");
    let mut args = vec!["--json".to_string(), "repair".into(), "--state-dir".into(), s(&f.path("state"))];
    args.extend(["--min-age".into(), "0".into()]);
    for svc in early.iter().chain([&late]) {
        args.extend(["--pid".into(), svc.pid().to_string()]);
    }
    let repaired = json(&run(&args.iter().map(String::as_str).collect::<Vec<_>>()));
    assert_eq!(repaired["regions"], serde_json::json!([]), "{repaired}");
}

#[test]
fn a_malformed_or_unsafe_configuration_is_refused_naming_it() {
    let f = Fixture::new();
    let cfg = f.path("agent.toml");
    write_config(&cfg, "rescan_seconds = \"soon\"\n");
    let out = run(&["agent", "--config", &s(&cfg)]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains(&s(&cfg)) && err.contains("malformed"), "{err}");
    write_config(&cfg, "typo_key = 1\n");
    let err = String::from_utf8_lossy(&run(&["agent", "--config", &s(&cfg)]).stderr).into_owned();
    assert!(err.contains("typo_key"), "{err}");
    write_config(&cfg, "");
    std::os::unix::fs::chown(&cfg, Some(65534), None).expect("chown");
    let err = String::from_utf8_lossy(&run(&["agent", "--config", &s(&cfg)]).stderr).into_owned();
    assert!(err.contains("owned by uid 65534"), "{err}");
    let missing = f.path("nowhere.toml");
    let err = String::from_utf8_lossy(&run(&["agent", "--config", &s(&missing)]).stderr).into_owned();
    assert!(err.contains("nowhere.toml"), "{err}");
}

#[test]
fn the_shipped_example_configuration_parses() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../agent/dist/agent.toml");
    let text = std::fs::read_to_string(&path).expect("example config");
    let config = hotpatch_agent::config::Config::parse(&path, &text).expect("parses");
    assert_eq!(config, hotpatch_agent::config::Config::default());
}

#[test]
fn a_process_started_later_is_found_through_process_events_between_rescans() {
    let f = Fixture::new();
    let catalog = f.path("catalog");
    std::fs::create_dir(&catalog).expect("mkdir");
    f.pack(&f.path("svc"), 1, &catalog.join("svc-1.hpatch"));
    let path = f.path("agent.toml");
    // Rescans ten minutes apart: only an exec event can find the new process in time.
    let text = format!(
        "state_dir = {:?}\ntrust_dir = {:?}\ncatalog_dir = {:?}\nrescan_seconds = 600\n",
        s(&f.path("state")),
        f.trust(),
        s(&catalog)
    );
    write_config(&path, &text);
    let agent = Agent::start_logging(&path, &f.path("agent.log"), "hotpatch_agent=debug");
    // Started once the agent has looked at every process and listens for events.
    for _ in 0..600 {
        if agent.log_text().contains("every process looked at") {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert!(agent.log_text().contains("listening to process events"), "{}", agent.log_text());
    let late = Svc::spawn(std::process::Command::new(f.path("svc")));
    assert!(late.wait_for(LEVEL1), "not patched through its exec event; log:\n{}", agent.log_text());
    // Caught at its entry point, or (the event came late) looked at as a
    // running process. A caught one is logged once released: it may print first.
    let caught = format!("new process seen at its entry point pid={}", late.pid());
    let looked = format!("process exec'd; looking at it pid={}", late.pid());
    let seen = |log: &str| log.contains(&caught) || log.contains(&looked);
    for _ in 0..600 {
        if seen(&agent.log_text()) {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let log = agent.log_text();
    assert!(seen(&log), "{log}");
}
