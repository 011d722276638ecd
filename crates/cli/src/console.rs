//! `hotpatch console`: a numbered menu for an operator at the machine (like
//! SConfig): status, readiness, scan, apply pending hotpatches, roll back,
//! enrollment and settings. Plain lines in and out, so it works on any
//! terminal and can be driven through a pseudo-terminal in tests.

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};

use clap::Args;
use hotpatch_agent::config::Config;
use hotpatch_agent::scan::{DirCatalog, Source};
use hotpatch_agent::trust::DEFAULT_CONFIG;

use crate::output::Output;

#[derive(Args)]
pub struct ConsoleArgs {
    /// The agent's configuration (state and trust directories, catalog, settings).
    #[arg(long, default_value = DEFAULT_CONFIG)]
    config: PathBuf,
    /// Trust directory [default: the configuration's].
    #[arg(long)]
    trust: Option<PathBuf>,
    /// State directory [default: the configuration's].
    #[arg(long)]
    state_dir: Option<PathBuf>,
    /// Catalog directory of signed packages [default: the configuration's catalog_dir].
    #[arg(long)]
    catalog: Option<PathBuf>,
    /// Allow plain http:// to a control plane on another machine when enrolling
    /// (as the configuration's insecure_http does; this only turns it on).
    #[arg(long)]
    insecure_http: bool,
}

struct Console<'a> {
    config_path: PathBuf,
    config: Config,
    out: &'a Output,
    input: Box<dyn BufRead + 'a>,
}

const MENU: &[&str] = &[
    "Status: hotpatches applied in running processes",
    "Readiness: machine prerequisites",
    "Scan: running targets against the catalog",
    "Apply pending hotpatches",
    "Roll back a hotpatch",
    "Enrollment with a control plane",
    "Settings",
];

pub fn console(args: ConsoleArgs, out: &Output) -> anyhow::Result<()> {
    let mut config = Config::load(&args.config, false)?;
    if let Some(t) = args.trust {
        config.trust_dir = t;
    }
    if let Some(s) = args.state_dir {
        config.state_dir = s;
    }
    if args.catalog.is_some() {
        config.catalog_dir = args.catalog;
    }
    config.insecure_http |= args.insecure_http;
    let stdin = std::io::stdin();
    let mut c = Console { config_path: args.config, config, out, input: Box::new(stdin.lock()) };
    c.run()
}

impl Console<'_> {
    /// One line of input, trimmed; `None` at end of input.
    fn ask(&mut self, prompt: &str) -> Option<String> {
        print!("{prompt}");
        let _ = std::io::stdout().flush();
        let mut line = String::new();
        match self.input.read_line(&mut line) {
            Ok(0) | Err(_) => None,
            Ok(_) => Some(line.trim().to_string()),
        }
    }

    fn run(&mut self) -> anyhow::Result<()> {
        loop {
            println!();
            println!("{}", self.out.bold(&format!("hotpatch console — {}", hotpatch_agent::facts::hostname())));
            for (i, entry) in MENU.iter().enumerate() {
                println!("  {}) {entry}", i + 1);
            }
            println!("  0) Exit");
            let Some(choice) = self.ask(&format!("Choose [0-{}]: ", MENU.len())) else { return Ok(()) };
            let done = match choice.as_str() {
                "0" | "q" | "exit" => return Ok(()),
                "1" => self.status(),
                "2" => self.readiness(),
                "3" => self.scan().map(|_| ()),
                "4" => self.apply_pending(),
                "5" => self.roll_back(),
                "6" => self.enrollment(),
                "7" => self.settings(),
                other => {
                    println!("no entry {other:?}; type a number from the menu");
                    Ok(())
                }
            };
            // A failed action is reported and the menu comes back.
            if let Err(e) = done {
                self.out.error(&e);
            }
        }
    }

    fn status(&mut self) -> anyhow::Result<()> {
        let applied = hotpatch_engine::status_all();
        if applied.is_empty() {
            println!("no hotpatch applied in any running process");
        }
        let rows: Vec<Vec<String>> = applied
            .iter()
            .map(|a| {
                let state = if a.active { "active" } else { "inactive" };
                let cves = a.record.cves.join(",");
                vec![
                    a.pid.to_string(),
                    a.record.patch_id.clone(),
                    a.record.level.to_string(),
                    a.record.target_file.clone(),
                    cves,
                    state.into(),
                ]
            })
            .collect();
        if !rows.is_empty() {
            self.out.table(&["PID", "PATCH", "LEVEL", "TARGET", "CVES", "STATE"], &rows);
        }
        match hotpatch_agent::state::load_last_checkin(&self.config.state_dir) {
            Ok(Some(last)) => println!("last check-in: {} {}", last.at_text(), last.error.as_deref().unwrap_or("(ok)")),
            _ => println!("last check-in: none"),
        }
        Ok(())
    }

    fn readiness(&mut self) -> anyhow::Result<()> {
        let paths =
            hotpatch_agent::readiness::Paths { trust_dir: &self.config.trust_dir, state_dir: &self.config.state_dir };
        let report = hotpatch_agent::readiness::assess(&paths, &self.config.readiness_policy());
        crate::machine::print_readiness(&report, self.out);
        Ok(())
    }

    /// The catalog directory, asked for when the configuration has none.
    fn catalog(&mut self) -> anyhow::Result<DirCatalog> {
        let dir = match self.config.catalog_dir.clone() {
            Some(d) => d,
            None => {
                let answer = self.ask("Catalog directory of signed .hpatch packages: ").unwrap_or_default();
                anyhow::ensure!(!answer.is_empty(), "no catalog directory given");
                PathBuf::from(answer)
            }
        };
        let trust = hotpatch_agent::load_trust(&self.config.trust_dir)?;
        Ok(DirCatalog::load(&dir, &trust)?)
    }

    fn scan(&mut self) -> anyhow::Result<(DirCatalog, hotpatch_agent::scan::ScanReport)> {
        let catalog = self.catalog()?;
        println!("scanning every running process against {} ...", catalog.dir.display());
        let report = hotpatch_agent::scan::scan(&Source::Dir(&catalog));
        crate::machine::print_scan(&report, self.out);
        Ok((catalog, report))
    }
}

mod actions;

fn yes(answer: Option<String>) -> bool {
    answer.is_some_and(|a| matches!(a.to_ascii_lowercase().as_str(), "y" | "yes"))
}

fn config_path_note(path: &Path) -> String {
    format!(
        "settings are kept in {}; the agent reloads them on SIGHUP (systemctl reload hotpatch-agent)",
        path.display()
    )
}
