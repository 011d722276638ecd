//! `hotpatch catalog sign`, `revoke` and `keys`: the publisher's signed
//! statements beside the packages. The metadata says which level of each target
//! is the latest and until when that holds; a revocation lets machines roll a
//! level back when their control plane asks; a keys document moves the
//! publisher to new keys (rotation). All go to the server, which
//! passes them on to agents; agents check them against their own keys.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::{Args, Subcommand};
use hotpatch_format::{
    CatalogEntry, CatalogMetadata, KeysMetadata, Package, PublicKey, Revocation, RevocationStatement, SecretKey,
};

use crate::output::Output;

#[derive(Args)]
pub struct CatalogArgs {
    #[command(subcommand)]
    command: CatalogCommand,
}

#[derive(Subcommand)]
enum CatalogCommand {
    /// Sign the catalog metadata of a directory of packages (latest level of each target, revoked levels, expiry).
    Sign(SignArgs),
    /// Sign a revocation of levels of one target (publisher or operations key).
    Revoke(RevokeArgs),
    /// Sign a keys document: the keys that speak for the publisher from now on (rotation).
    Keys(KeysArgs),
}

#[derive(Args)]
struct KeysArgs {
    /// A current key of the publisher (secret): the anchor itself, or a key rotated in before.
    #[arg(long)]
    key: PathBuf,
    /// The publisher's anchor: the public key machines hold in their trust directory.
    #[arg(long)]
    anchor: PathBuf,
    /// The document's version: one more than the last keys document's (the first is 1).
    #[arg(long)]
    version: u64,
    /// A public key that speaks for the publisher from this version on (repeatable);
    /// current keys left out are retired for good.
    #[arg(long = "new-key", required = true, value_name = "PUB")]
    new_keys: Vec<PathBuf>,
    /// Where to write the signed document (JSON).
    #[arg(short = 'o', long)]
    out: PathBuf,
}

#[derive(Args)]
struct SignArgs {
    /// The publisher's secret key.
    #[arg(long)]
    key: PathBuf,
    /// Directory of the published packages (*.hpatch).
    #[arg(long)]
    catalog: PathBuf,
    /// How long the metadata stays valid: a number with s, m, h or d (at most 366d).
    #[arg(long, default_value = "7d")]
    expires: String,
    /// The metadata's version; it must grow with each signing [default: the time in seconds].
    #[arg(long)]
    version: Option<u64>,
    /// A revoked level, BUILD_ID:LEVEL (repeatable); it is no longer listed as latest.
    #[arg(long, value_name = "BUILD_ID:LEVEL")]
    revoke: Vec<String>,
    /// A publisher key id no machine should trust any more (repeatable): lost or retired.
    #[arg(long, value_name = "KEY_ID")]
    revoke_key: Vec<String>,
    /// Why the --revoke levels are revoked.
    #[arg(long, default_value = "revoked by the publisher")]
    reason: String,
    /// Where to write the signed metadata (JSON).
    #[arg(short = 'o', long)]
    out: PathBuf,
}

#[derive(Args)]
struct RevokeArgs {
    /// A publisher's or the organisation's operations secret key.
    #[arg(long)]
    key: PathBuf,
    /// The target (baseline build-id) whose levels are revoked.
    #[arg(long)]
    build_id: String,
    /// A revoked level (repeatable).
    #[arg(long, required = true)]
    level: Vec<u32>,
    /// Why, for the operators who see it.
    #[arg(long)]
    reason: String,
    /// Where to write the signed statement (JSON).
    #[arg(short = 'o', long)]
    out: PathBuf,
}

pub fn catalog(args: CatalogArgs, out: &Output) -> anyhow::Result<()> {
    match args.command {
        CatalogCommand::Sign(a) => sign(a, out),
        CatalogCommand::Revoke(a) => revoke(a, out),
        CatalogCommand::Keys(a) => keys(a, out),
    }
}

fn keys(args: KeysArgs, out: &Output) -> anyhow::Result<()> {
    let key = SecretKey::load(&args.key)?;
    let anchor = PublicKey::load(&args.anchor)?;
    let keys = args
        .new_keys
        .iter()
        .map(|p| PublicKey::load(p).map(|k| k.to_text().trim().to_string()))
        .collect::<Result<Vec<_>, _>>()?;
    let document = KeysMetadata {
        publisher: anchor.id_hex(),
        version: args.version,
        issued: jiff::Timestamp::now().to_string(),
        keys,
    };
    let doc = document.sign(&key)?;
    write_replacing(&args.out, &doc.to_json())?;
    let ids: Vec<String> = args.new_keys.iter().filter_map(|p| PublicKey::load(p).ok()).map(|k| k.id_hex()).collect();
    report(
        out,
        &args.out,
        &doc,
        &[("publisher", anchor.id_hex()), ("version", args.version.to_string()), ("keys", ids.join(", "))],
    )
}

fn sign(args: SignArgs, out: &Output) -> anyhow::Result<()> {
    let key = SecretKey::load(&args.key)?;
    let lifetime = parse_lifetime(&args.expires)?;
    let revoked = parse_revocations(&args.revoke, &args.reason)?;
    let targets = latest_levels(&args.catalog, &revoked)?;
    let now = jiff::Timestamp::now();
    let expires = now.checked_add(lifetime).context("--expires is too far in the future")?;
    let version = args.version.unwrap_or_else(|| now.as_second().max(1) as u64);
    let metadata = CatalogMetadata {
        version,
        issued: now.to_string(),
        expires: expires.to_string(),
        targets,
        revoked,
        revoked_keys: args.revoke_key.clone(),
    };
    let doc = metadata.sign(&key)?;
    write_replacing(&args.out, &doc.to_json())?;
    report(
        out,
        &args.out,
        &doc,
        &[
            ("version", version.to_string()),
            ("expires", metadata.expires.clone()),
            ("targets", metadata.targets.len().to_string()),
            ("revoked", metadata.revoked.iter().map(|r| r.levels.len()).sum::<usize>().to_string()),
        ],
    )
}

fn revoke(args: RevokeArgs, out: &Output) -> anyhow::Result<()> {
    let key = SecretKey::load(&args.key)?;
    let statement = RevocationStatement {
        revocation: Revocation { build_id: args.build_id.clone(), levels: args.level.clone(), reason: args.reason },
        issued: jiff::Timestamp::now().to_string(),
    };
    let doc = statement.sign(&key)?;
    write_replacing(&args.out, &doc.to_json())?;
    let levels: Vec<String> = args.level.iter().map(u32::to_string).collect();
    report(out, &args.out, &doc, &[("build-id", args.build_id), ("levels", levels.join(", "))])
}

fn report(
    out: &Output,
    path: &Path,
    doc: &hotpatch_format::SignedDocument,
    rows: &[(&str, String)],
) -> anyhow::Result<()> {
    if out.json {
        let mut v = serde_json::json!({ "file": path, "key_id": doc.key_id });
        for (k, val) in rows {
            v[*k] = serde_json::Value::String(val.clone());
        }
        return out.print_json(&v);
    }
    let mut all: Vec<(&str, String)> = vec![("file", path.display().to_string()), ("signed by", doc.key_id.clone())];
    all.extend(rows.iter().cloned());
    out.fields(&all);
    Ok(())
}

/// `7d`, `12h`, `30m`, `3600s`: a positive lifetime of at most a year and a day.
fn parse_lifetime(text: &str) -> anyhow::Result<jiff::SignedDuration> {
    let bad = || anyhow::anyhow!("--expires {text:?} is not a lifetime like 7d, 12h, 30m or 3600s");
    let (digits, unit) = text.split_at(text.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?);
    let n: i64 = digits.parse().map_err(|_| bad())?;
    let seconds = match unit {
        "s" => Some(n),
        "m" => n.checked_mul(60),
        "h" => n.checked_mul(3600),
        "d" => n.checked_mul(86400),
        _ => None,
    }
    .ok_or_else(bad)?;
    if seconds <= 0 || seconds > 366 * 86400 {
        anyhow::bail!("--expires {text:?} must be more than 0 and at most 366d");
    }
    Ok(jiff::SignedDuration::from_secs(seconds))
}

/// `BUILD_ID:LEVEL` arguments, grouped by build-id.
fn parse_revocations(args: &[String], reason: &str) -> anyhow::Result<Vec<Revocation>> {
    let mut by_build: BTreeMap<String, Vec<u32>> = BTreeMap::new();
    for a in args {
        let (build, level) = a.split_once(':').with_context(|| format!("--revoke {a:?} is not BUILD_ID:LEVEL"))?;
        let level: u32 = level.parse().with_context(|| format!("--revoke {a:?}: {level:?} is not a level"))?;
        by_build.entry(build.to_string()).or_default().push(level);
    }
    Ok(by_build
        .into_iter()
        .map(|(build_id, levels)| Revocation { build_id, levels, reason: reason.to_string() })
        .collect())
}

/// The highest level of each (build-id, file) among the packages in `dir`,
/// leaving out revoked levels. A file that is not a valid package is an error
/// naming it: the publisher would otherwise sign a catalog they did not mean.
fn latest_levels(dir: &Path, revoked: &[Revocation]) -> anyhow::Result<Vec<CatalogEntry>> {
    let is_revoked = |b: &str, l: u32| revoked.iter().any(|r| r.build_id == b && r.levels.contains(&l));
    let mut latest: BTreeMap<(String, String), CatalogEntry> = BTreeMap::new();
    let entries = std::fs::read_dir(dir).with_context(|| format!("cannot read catalog directory {}", dir.display()))?;
    for entry in entries {
        let path = entry.with_context(|| format!("cannot read catalog directory {}", dir.display()))?.path();
        if path.extension().is_none_or(|e| e != "hpatch") {
            continue;
        }
        let bytes = std::fs::read(&path).with_context(|| format!("cannot read {}", path.display()))?;
        let package = Package::parse(&bytes).with_context(|| format!("{} is not a valid package", path.display()))?;
        let m = &package.manifest;
        if is_revoked(&m.target.build_id, m.level) {
            continue;
        }
        let entry = CatalogEntry {
            build_id: m.target.build_id.clone(),
            file_name: m.target.file_name.clone(),
            patch_id: m.patch_id.clone(),
            level: m.level,
            sha256: hotpatch_format::sha256_hex(&bytes),
        };
        let slot = latest.entry((entry.build_id.clone(), entry.file_name.clone()));
        match slot {
            std::collections::btree_map::Entry::Vacant(v) => {
                v.insert(entry);
            }
            std::collections::btree_map::Entry::Occupied(mut o) => {
                if o.get().level == entry.level && o.get().sha256 != entry.sha256 {
                    anyhow::bail!(
                        "two different packages for level {} of {} in {}; keep one",
                        entry.level,
                        entry.build_id,
                        dir.display()
                    );
                }
                if entry.level > o.get().level {
                    o.insert(entry);
                }
            }
        }
    }
    Ok(latest.into_values().collect())
}

/// Writes through a temporary file and a rename: a reader (the upload, a web
/// server) never sees half a document.
fn write_replacing(path: &Path, text: &str) -> anyhow::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lifetimes_and_revocations_parse_or_are_named() {
        assert_eq!(parse_lifetime("7d").expect("7d").as_secs(), 7 * 86400);
        assert_eq!(parse_lifetime("90s").expect("90s").as_secs(), 90);
        for bad in ["", "7", "d", "0d", "-1d", "400d", "7w", "1.5h"] {
            assert!(parse_lifetime(bad).is_err(), "{bad}");
        }
        let r = parse_revocations(&["aa:2".into(), "aa:3".into(), "bb:1".into()], "why").expect("parse");
        assert_eq!(r.len(), 2);
        assert_eq!(r[0].levels, [2, 3]);
        assert!(parse_revocations(&["aa".into()], "why").is_err());
        assert!(parse_revocations(&["aa:x".into()], "why").is_err());
    }
}
