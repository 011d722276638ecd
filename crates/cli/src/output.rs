//! Output for people (aligned text, colour on a terminal) or machines (`--json`).

use serde::Serialize;
use std::io::IsTerminal;

pub struct Output {
    pub json: bool,
    color: bool,
}

impl Output {
    pub fn new(json: bool) -> Output {
        let color = std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none();
        Output { json, color }
    }

    pub fn print_json<T: Serialize>(&self, value: &T) -> anyhow::Result<()> {
        use std::io::Write;
        let text = serde_json::to_string_pretty(value)?;
        // A closed pipe (`| head`) is the reader's choice, not an error worth a panic.
        match writeln!(std::io::stdout().lock(), "{text}") {
            Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e.into()),
            _ => Ok(()),
        }
    }

    fn paint(&self, code: &str, text: &str) -> String {
        if self.color { format!("\x1b[{code}m{text}\x1b[0m") } else { text.to_owned() }
    }

    pub fn good(&self, text: &str) -> String {
        self.paint("32", text)
    }

    pub fn bad(&self, text: &str) -> String {
        self.paint("31", text)
    }

    pub fn bold(&self, text: &str) -> String {
        self.paint("1", text)
    }

    /// `key: value` lines with the keys aligned.
    pub fn fields(&self, rows: &[(&str, String)]) {
        let width = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
        for (k, v) in rows {
            println!("{:width$}  {v}", format!("{k}:"), width = width + 1);
        }
    }

    /// A table with a header row, columns padded to their widest cell.
    pub fn table(&self, header: &[&str], rows: &[Vec<String>]) {
        let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
        for row in rows {
            for (i, cell) in row.iter().enumerate() {
                if i < widths.len() {
                    widths[i] = widths[i].max(cell.chars().count());
                }
            }
        }
        let line = |cells: Vec<String>| {
            cells
                .iter()
                .enumerate()
                .map(|(i, c)| format!("{c:w$}", w = widths.get(i).copied().unwrap_or(0)))
                .collect::<Vec<_>>()
                .join("  ")
                .trim_end()
                .to_owned()
        };
        println!("{}", self.bold(&line(header.iter().map(|s| s.to_string()).collect())));
        for row in rows {
            println!("{}", line(row.clone()));
        }
    }

    /// Errors go to stderr as text, or to stdout as `{"error": ...}` with `--json`.
    pub fn error(&self, err: &anyhow::Error) {
        // Library errors often repeat their source in their own message; say each thing once.
        let mut chain: Vec<String> = Vec::new();
        for cause in err.chain().map(|e| e.to_string()) {
            if !chain.last().is_some_and(|prev| prev.contains(&cause)) {
                chain.push(cause);
            }
        }
        if self.json {
            let value = serde_json::json!({ "error": chain.join(": "), "causes": chain });
            println!("{}", serde_json::to_string_pretty(&value).unwrap_or_default());
        } else {
            let color = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
            let label = if color { "\x1b[31merror\x1b[0m" } else { "error" };
            eprintln!("{label}: {}", chain.join(": "));
        }
    }
}
