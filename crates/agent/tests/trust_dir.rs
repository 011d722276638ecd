//! The trust directory and the files the agent trusts: missing, empty, or
//! writable by someone other than root is refused with the path named.
//! Runs as root (the project's tests do), so files can be given to another user.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use hotpatch_agent::trust::{TrustError, check_safe, load_trust, prepare_state_dir};
use hotpatch_format::SecretKey;

fn chmod(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

fn trust_dir_with_key(root: &Path) -> std::path::PathBuf {
    let dir = root.join("trusted-keys");
    std::fs::create_dir(&dir).expect("mkdir");
    chmod(&dir, 0o755);
    SecretKey::from_seed([7; 32]).public().save(&dir.join("publisher.pub")).expect("save key");
    chmod(&dir.join("publisher.pub"), 0o644);
    dir
}

#[test]
fn missing_and_empty_trust_directories_are_errors_naming_them() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let missing = tmp.path().join("nowhere");
    let e = load_trust(&missing).expect_err("missing");
    assert!(matches!(e, TrustError::Missing { .. }), "{e}");
    assert!(e.to_string().contains(&missing.display().to_string()), "{e}");
    let empty = tmp.path().join("empty");
    std::fs::create_dir(&empty).expect("mkdir");
    std::fs::write(empty.join("README"), "not a key").expect("write");
    let e = load_trust(&empty).expect_err("empty");
    assert!(matches!(e, TrustError::Empty(_)), "{e}");
    assert!(e.to_string().contains(&empty.display().to_string()), "{e}");
}

#[test]
fn a_safe_trust_directory_loads_and_an_unsafe_one_is_refused() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = trust_dir_with_key(tmp.path());
    assert_eq!(load_trust(&dir).expect("safe dir").len(), 1);
    assert_eq!(load_trust(&dir.join("publisher.pub")).expect("single key file").len(), 1);

    chmod(&dir, 0o777);
    let e = load_trust(&dir).expect_err("world-writable dir");
    assert!(e.to_string().contains("writable by everyone") && e.to_string().contains("trusted-keys"), "{e}");
    chmod(&dir, 0o775);
    let e = load_trust(&dir).expect_err("group-writable dir");
    assert!(e.to_string().contains("writable by its group"), "{e}");
    chmod(&dir, 0o755);

    let key = dir.join("publisher.pub");
    std::os::unix::fs::chown(&key, Some(65534), None).expect("chown");
    let e = load_trust(&dir).expect_err("key owned by nobody");
    assert!(matches!(e, TrustError::NotRootOwned { uid: 65534, .. }), "{e}");
    assert!(e.to_string().contains("publisher.pub"), "{e}");

    let bad = dir.join("broken.pub");
    std::os::unix::fs::chown(&key, Some(0), None).expect("chown back");
    std::fs::write(&bad, "not a key\n").expect("write");
    let e = load_trust(&dir).expect_err("malformed key");
    assert!(e.to_string().contains("broken.pub"), "{e}");
}

#[test]
fn state_directory_is_created_private_and_checked() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let state = tmp.path().join("state");
    prepare_state_dir(&state).expect("created");
    assert_eq!(std::fs::metadata(&state).expect("stat").permissions().mode() & 0o777, 0o700);
    chmod(&state, 0o733);
    let e = prepare_state_dir(&state).expect_err("writable by others");
    assert!(e.to_string().contains("state directory"), "{e}");
    let config = tmp.path().join("agent.toml");
    std::fs::write(&config, "").expect("write");
    chmod(&config, 0o600);
    check_safe(&config, "configuration").expect("root-owned config");
    std::os::unix::fs::chown(&config, Some(65534), None).expect("chown");
    assert!(check_safe(&config, "configuration").is_err());
}
