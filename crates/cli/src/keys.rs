//! `hotpatch keygen`.

use crate::output::Output;
use anyhow::Context;
use clap::Args;
use hotpatch_format::SecretKey;
use std::path::PathBuf;

#[derive(Args)]
pub struct KeygenArgs {
    /// Directory to write NAME.key (secret, 0600) and NAME.pub into; created if missing.
    #[arg(long)]
    out: PathBuf,
    /// Base name of the key files.
    #[arg(long, default_value = "publisher")]
    name: String,
}

pub fn keygen(args: KeygenArgs, out: &Output) -> anyhow::Result<()> {
    if args.name.is_empty() || args.name.contains('/') {
        anyhow::bail!("--name must be a plain file name, found {:?}", args.name);
    }
    std::fs::create_dir_all(&args.out).with_context(|| format!("cannot create {}", args.out.display()))?;
    let secret_path = args.out.join(format!("{}.key", args.name));
    let public_path = args.out.join(format!("{}.pub", args.name));
    for path in [&secret_path, &public_path] {
        if path.exists() {
            anyhow::bail!("refusing to overwrite existing key file {}", path.display());
        }
    }
    let key = SecretKey::generate()?;
    key.save(&secret_path)?;
    // Never leave a secret key without its public half: a retry would then
    // refuse to overwrite the lone secret.
    if let Err(e) = key.public().save(&public_path) {
        let _ = std::fs::remove_file(&secret_path);
        return Err(e.into());
    }
    let id = key.public().id_hex();
    if out.json {
        out.print_json(&serde_json::json!({
            "key_id": id,
            "secret_key": secret_path,
            "public_key": public_path,
        }))
    } else {
        out.fields(&[
            ("key id", id),
            ("secret key", format!("{} (mode 0600: keep it off the fleet)", secret_path.display())),
            ("public key", format!("{} (give it to machines with --trust)", public_path.display())),
        ]);
        Ok(())
    }
}
