//! Building the source tree twice, as is and with the fix, through a
//! compiler wrapper that puts every function in its own section (so each
//! can be compared and moved alone).
//!
//! Both builds run in the same directory path, one after the other, so that
//! `__FILE__` strings and debug paths are the same in both and a difference
//! between the builds is a difference of the fix alone.

use anyhow::{Context, bail};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

pub struct Work {
    root: PathBuf,
    _temp: Option<tempfile::TempDir>,
}

/// Compiler names the wrapper stands in for, when the machine has them.
fn compiler_names(path: &str) -> Vec<String> {
    let mut names = std::collections::BTreeSet::new();
    for dir in std::env::split_paths(path) {
        let Ok(entries) = std::fs::read_dir(&dir) else { continue };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let compiler = matches!(name.as_str(), "cc" | "c++" | "c89" | "c99")
                || ["gcc", "g++", "clang", "clang++"].iter().any(|c| {
                    name == *c
                        || name.starts_with(&format!("{c}-"))
                        || name.ends_with(&format!("-{c}"))
                        || name.contains(&format!("-{c}-"))
                });
            if compiler && !name.contains("-ar") && !name.contains("-nm") && !name.contains("-ranlib") {
                names.insert(name);
            }
        }
    }
    names.into_iter().collect()
}

const WRAPPER: &str = r#"#!/bin/sh
# Written by `hotpatch build`: the real compiler, with each function in its
# own section. Data keeps the build's own layout (-fdata-sections would move
# variables, and the builder's link could then no longer stand for the
# shipped file's symbols).
self=$(basename "$0")
real=$(PATH="$HOTPATCH_REAL_PATH" command -v "$self") || { echo "hotpatch build: no $self on PATH" >&2; exit 127; }
exec "$real" "$@" -ffunction-sections
"#;

impl Work {
    pub fn new(keep: Option<&Path>) -> anyhow::Result<Work> {
        let (root, temp) = match keep {
            Some(dir) => {
                std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
                if std::fs::read_dir(dir)?.next().is_some() {
                    bail!("--keep-work {} is not empty; give an empty or new directory", dir.display());
                }
                (dir.canonicalize()?, None)
            }
            None => {
                let temp = tempfile::Builder::new().prefix("hotpatch-build.").tempdir()?;
                (temp.path().to_path_buf(), Some(temp))
            }
        };
        Ok(Work { root, _temp: temp })
    }

    fn write_wrappers(&self, path: &str) -> anyhow::Result<PathBuf> {
        use std::os::unix::fs::PermissionsExt;
        let bin = self.root.join("bin");
        std::fs::create_dir_all(&bin)?;
        let names = compiler_names(path);
        if names.is_empty() {
            bail!("no C compiler (gcc, cc, clang) on PATH");
        }
        for name in names {
            let file = bin.join(&name);
            std::fs::write(&file, WRAPPER)?;
            std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o755))?;
        }
        Ok(bin)
    }

    /// Builds `source` as is and with `patches`; returns (original, fixed) trees.
    pub fn build_both(
        &self,
        source: &Path,
        patches: &[PathBuf],
        command: &str,
        jobs: u32,
    ) -> anyhow::Result<(PathBuf, PathBuf)> {
        let source = source.canonicalize().with_context(|| format!("source tree {}", source.display()))?;
        for p in patches {
            if !p.is_file() {
                bail!("patch {} does not exist or is not a file", p.display());
            }
        }
        let path = std::env::var("PATH").unwrap_or_else(|_| "/usr/bin:/bin".into());
        let bin = self.write_wrappers(&path)?;
        let include = self.write_header()?;
        // One path for both builds (see the module comment).
        let name = source.file_name().map(|n| n.to_owned()).unwrap_or_else(|| "src".into());
        let tree = self.root.join("tree").join(&name);
        let old = self.root.join("original");
        let new = self.root.join("fixed");
        copy_tree(&source, &tree)?;
        let env = BuildEnv { bin: &bin, path: &path, include: &include };
        self.run_build(&tree, command, jobs, &env, "original", 1)?;
        std::fs::rename(&tree, &old)?;
        copy_tree(&source, &tree)?;
        for p in patches {
            apply_patch(&tree, p)?;
        }
        self.run_build(&tree, command, jobs, &env, "fixed", 2)?;
        std::fs::rename(&tree, &new)?;
        Ok((old, new))
    }

    /// `hotpatch.h` (shadow variables, callbacks) in a directory of its own,
    /// searched by the compiler (`CPATH`) as if given with `-I`: a fix can
    /// `#include <hotpatch.h>` without changing the build system.
    fn write_header(&self) -> anyhow::Result<PathBuf> {
        let dir = self.root.join("include");
        std::fs::create_dir_all(&dir)?;
        std::fs::write(dir.join("hotpatch.h"), hotpatch_build::runtime::HEADER)?;
        Ok(dir)
    }

    fn run_build(
        &self,
        tree: &Path,
        command: &str,
        jobs: u32,
        env: &BuildEnv<'_>,
        what: &str,
        n: u32,
    ) -> anyhow::Result<()> {
        let (bin, path) = (env.bin, env.path);
        let cpath = match std::env::var_os("CPATH") {
            Some(more) if !more.is_empty() => {
                let mut v = env.include.as_os_str().to_owned();
                v.push(":");
                v.push(more);
                v
            }
            _ => env.include.as_os_str().to_owned(),
        };
        let log = self.root.join(format!("{what}.log"));
        eprintln!(":: [{n}/2] building the {what} tree ({command}), log {}", log.display());
        let started = Instant::now();
        let log_file = std::fs::File::create(&log)?;
        let status = Command::new("sh")
            .arg("-c")
            .arg(command)
            .current_dir(tree)
            .env("PATH", format!("{}:{path}", bin.display()))
            .env("HOTPATCH_REAL_PATH", path)
            .env("CPATH", cpath)
            .env("MAKEFLAGS", format!("-j{}", jobs.max(1)))
            .env("DEB_BUILD_OPTIONS", format!("parallel={} nocheck", jobs.max(1)))
            .stdin(Stdio::null())
            .stdout(log_file.try_clone()?)
            .stderr(log_file)
            .status()
            .with_context(|| format!("cannot run sh -c {command:?}"))?;
        if !status.success() {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(20).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            bail!("the {what} build failed ({status}); last lines of {}:\n{}", log.display(), tail.join("\n"));
        }
        eprintln!(":: [{n}/2] {what} built in {:.1} s", started.elapsed().as_secs_f64());
        Ok(())
    }
}

/// Where the builds find the compiler wrappers, the real tools and `hotpatch.h`.
struct BuildEnv<'a> {
    bin: &'a Path,
    path: &'a str,
    include: &'a Path,
}

fn copy_tree(from: &Path, to: &Path) -> anyhow::Result<()> {
    if let Some(parent) = to.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let status = Command::new("cp").arg("-a").arg(from).arg(to).status().context("cannot run cp")?;
    if !status.success() {
        bail!("copying {} to {} failed", from.display(), to.display());
    }
    Ok(())
}

fn apply_patch(tree: &Path, patch: &Path) -> anyhow::Result<()> {
    let patch = patch.canonicalize()?;
    let output = Command::new("patch")
        .args(["-p1", "--batch", "--forward", "--no-backup-if-mismatch", "-i"])
        .arg(&patch)
        .current_dir(tree)
        .output()
        .context("cannot run patch (install Debian's `patch` package)")?;
    if !output.status.success() {
        bail!(
            "patch {} does not apply to the source (patch -p1):\n{}{}",
            patch.display(),
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(())
}
