//! Building the source tree twice, as is and with the fix, through a
//! compiler wrapper that puts every function in its own section (so each
//! can be compared and moved alone).
//!
//! Both builds run in the same directory path, so that `__FILE__` strings and
//! debug paths are the same in both and a difference between the builds is a
//! difference of the fix alone. With two jobs or more they run at once, each
//! in its own mount namespace where its tree is bind-mounted on that one path
//! (a user namespace provides the namespace where we are not root); where no
//! namespace can be made, one after the other.

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
        let name = source.file_name().map(|n| n.to_owned()).unwrap_or_else(|| "src".into());
        let env = BuildEnv { command, bin: &bin, path: &path, include: &include };
        match (jobs >= 2).then(|| namespace::Kind::probe(&self.root)).flatten() {
            Some(kind) => self.build_concurrently(&source, patches, &name, &env, jobs, kind),
            None => {
                if jobs >= 2 {
                    eprintln!(":: no mount namespace can be made here; the two builds run one after the other");
                }
                self.build_in_turn(&source, patches, &name, &env, jobs)
            }
        }
    }

    /// One path for both builds (see the module comment), used in turn.
    fn build_in_turn(
        &self,
        source: &Path,
        patches: &[PathBuf],
        name: &std::ffi::OsStr,
        env: &BuildEnv,
        jobs: u32,
    ) -> anyhow::Result<(PathBuf, PathBuf)> {
        let tree = self.root.join("tree").join(name);
        let old = self.root.join("original");
        let new = self.root.join("fixed");
        copy_tree(source, &tree)?;
        self.run_build(&tree, None, env, jobs, "original", 1)?.wait_done()?;
        std::fs::rename(&tree, &old)?;
        copy_fixed(source, patches, &tree)?;
        self.run_build(&tree, None, env, jobs, "fixed", 2)?.wait_done()?;
        std::fs::rename(&tree, &new)?;
        Ok((old, new))
    }

    /// Each tree lives under its own directory (`trees/original/NAME`,
    /// `trees/fixed/NAME`, so that files a build writes beside its tree, as
    /// `dpkg-buildpackage` does, stay apart) and is seen by its build at
    /// `tree/NAME`.
    fn build_concurrently(
        &self,
        source: &Path,
        patches: &[PathBuf],
        name: &std::ffi::OsStr,
        env: &BuildEnv,
        jobs: u32,
        kind: namespace::Kind,
    ) -> anyhow::Result<(PathBuf, PathBuf)> {
        let seen_at = self.root.join("tree");
        std::fs::create_dir_all(seen_at.join(name))?;
        let old_home = self.root.join("trees").join("original");
        let new_home = self.root.join("trees").join("fixed");
        copy_tree(source, &old_home.join(name))?;
        copy_fixed(source, patches, &new_home.join(name))?;
        let each = jobs.div_ceil(2);
        eprintln!(":: the two builds run at once, {each} job(s) each");
        let tree = seen_at.join(name);
        let original = self.run_build(&tree, Some((kind, &old_home, &seen_at)), env, each, "original", 1)?;
        let fixed = self.run_build(&tree, Some((kind, &new_home, &seen_at)), env, each, "fixed", 2);
        // Both are waited for whatever happens, so no build outlives us.
        let original = original.wait_done();
        let fixed = fixed.and_then(Running::wait_done);
        original?;
        fixed?;
        Ok((old_home.join(name), new_home.join(name)))
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

    /// Starts one build of `tree`; inside a namespace when `isolated` says
    /// which directory to bind on which path.
    fn run_build(
        &self,
        tree: &Path,
        isolated: Option<(namespace::Kind, &Path, &Path)>,
        env: &BuildEnv,
        jobs: u32,
        what: &'static str,
        n: u32,
    ) -> anyhow::Result<Running> {
        let log = self.root.join(format!("{what}.log"));
        eprintln!(":: [{n}/2] building the {what} tree ({}), log {}", env.command, log.display());
        let log_file = std::fs::File::create(&log)?;
        let cpath = match std::env::var_os("CPATH") {
            Some(more) if !more.is_empty() => {
                let mut v = env.include.as_os_str().to_owned();
                v.push(":");
                v.push(more);
                v
            }
            _ => env.include.as_os_str().to_owned(),
        };
        let mut cmd = match isolated {
            Some((kind, home, seen_at)) => kind.command(home, seen_at, tree, env.command),
            None => {
                let mut cmd = Command::new("sh");
                cmd.arg("-c").arg(env.command).current_dir(tree);
                cmd
            }
        };
        let child = cmd
            .env("PATH", format!("{}:{}", env.bin.display(), env.path))
            .env("HOTPATCH_REAL_PATH", env.path)
            .env("CPATH", cpath)
            .env("MAKEFLAGS", format!("-j{}", jobs.max(1)))
            .env("DEB_BUILD_OPTIONS", format!("parallel={} nocheck", jobs.max(1)))
            .stdin(Stdio::null())
            .stdout(log_file.try_clone()?)
            .stderr(log_file)
            .spawn()
            .with_context(|| format!("cannot run sh -c {:?}", env.command))?;
        Ok(Running { child, log, what, n, started: Instant::now() })
    }
}

/// What both builds share: the command, the compiler wrappers' `PATH` and
/// the directory of `hotpatch.h`.
struct BuildEnv<'a> {
    command: &'a str,
    bin: &'a Path,
    path: &'a str,
    include: &'a Path,
}

/// A build under way.
struct Running {
    child: std::process::Child,
    log: PathBuf,
    what: &'static str,
    n: u32,
    started: Instant,
}

impl Running {
    fn wait_done(mut self) -> anyhow::Result<()> {
        let status = self.child.wait().with_context(|| format!("waiting for the {} build", self.what))?;
        if !status.success() {
            let text = std::fs::read_to_string(&self.log).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(20).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            bail!(
                "the {} build failed ({status}); last lines of {}:\n{}",
                self.what,
                self.log.display(),
                tail.join("\n")
            );
        }
        eprintln!(":: [{}/2] {} built in {:.1} s", self.n, self.what, self.started.elapsed().as_secs_f64());
        Ok(())
    }
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

/// A copy of `source` with the fix's patches applied, in order.
fn copy_fixed(source: &Path, patches: &[PathBuf], to: &Path) -> anyhow::Result<()> {
    copy_tree(source, to)?;
    patches.iter().try_for_each(|p| apply_patch(to, p))
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

/// Private mount namespaces for the concurrent builds (util-linux `unshare`).
mod namespace {
    use std::path::Path;
    use std::process::{Command, Stdio};

    #[derive(Clone, Copy, Debug)]
    pub enum Kind {
        /// We may mount: a mount namespace alone.
        Mount,
        /// Not root: a user namespace (mapped to root inside) with its mounts.
        User,
    }

    /// Binds `$1` on `$2`, enters the tree `$3` (the same path as seen
    /// outside) and runs the build command `$4`.
    const ENTER: &str = r#"mount --bind "$1" "$2" && cd "$3" && exec sh -c "$4""#;

    impl Kind {
        /// The kind of namespace this machine lets us make, tried for real
        /// by binding `dir` on itself.
        pub fn probe(dir: &Path) -> Option<Kind> {
            [Kind::Mount, Kind::User].into_iter().find(|kind| {
                let mut cmd = Command::new("unshare");
                kind.flags(&mut cmd);
                cmd.args(["sh", "-c", r#"mount --bind "$1" "$1""#, "probe"])
                    .arg(dir)
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status()
                    .is_ok_and(|s| s.success())
            })
        }

        fn flags(self, cmd: &mut Command) {
            if let Kind::User = self {
                cmd.args(["--user", "--map-root-user"]);
            }
            cmd.args(["--mount", "--propagation", "private", "--"]);
        }

        pub fn command(self, home: &Path, seen_at: &Path, tree: &Path, build: &str) -> Command {
            let mut cmd = Command::new("unshare");
            self.flags(&mut cmd);
            cmd.args(["sh", "-c", ENTER, "hotpatch-build"]).arg(home).arg(seen_at).arg(tree).arg(build);
            cmd
        }
    }
}
