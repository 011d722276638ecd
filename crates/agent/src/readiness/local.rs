//! Checks of the agent's own files: the trust directory, the state directory,
//! and enrollment with the control plane (with the last check-in's outcome).

use std::path::Path;

use super::{Check, State, check};

pub fn trust(dir: &Path) -> Check {
    let why = "only hotpatches signed by a key in the trust directory are applied";
    match crate::trust::load_trust(dir) {
        Ok(store) => check("trust", State::Ok, format!("{} trusted key(s) in {}", store.len(), dir.display()), why),
        Err(e) => check("trust", State::Failed, e.to_string(), why)
            .fix(format!("put the publisher's .pub key in {} (root-owned, not group/world-writable)", dir.display())),
    }
}

pub fn state_dir(dir: &Path) -> Check {
    let why = "the machine key, the journal and the last answer live there";
    if !dir.exists() {
        return check("state", State::Warning, format!("{} does not exist yet", dir.display()), why)
            .fix("it is created (0700) at enrollment or when the agent starts");
    }
    match crate::trust::check_safe(dir, "state directory") {
        Ok(()) => check("state", State::Ok, format!("{} is root's alone", dir.display()), why),
        Err(e) => check("state", State::Failed, e.to_string(), why)
            .fix(format!("chown root {0} && chmod 0700 {0}", dir.display())),
    }
}

pub fn server(dir: &Path) -> Check {
    let why = "the control plane assigns hotpatches and collects results; without it use --catalog DIR";
    let cred = match crate::state::load_credential(dir) {
        Ok(c) => c,
        Err(crate::StateError::NotEnrolled(_)) => {
            return check("server", State::Warning, "not enrolled with a control plane", why)
                .fix("hotpatch agent --enroll URL TOKEN");
        }
        Err(e) => return check("server", State::Failed, e.to_string(), why),
    };
    let enrolled = format!("enrolled as machine {} with {}", cred.machine_id, cred.server);
    match crate::state::load_last_checkin(dir) {
        Ok(Some(last)) if last.error.is_none() => {
            check("server", State::Ok, format!("{enrolled}; last check-in ok at {}", last.at_text()), why)
        }
        Ok(Some(last)) => check(
            "server",
            State::Warning,
            format!("{enrolled}; last check-in failed at {}: {}", last.at_text(), last.error.unwrap_or_default()),
            why,
        )
        .fix("check the network path to the server and the agent's log"),
        Ok(None) => check("server", State::Warning, format!("{enrolled}; no check-in yet"), why)
            .fix("start the agent (hotpatch agent) or run hotpatch agent --once"),
        Err(e) => check("server", State::Warning, format!("{enrolled}; {e}"), why),
    }
}

/// The publisher's signed catalog metadata as the last check-in left it: a
/// stale catalog means this machine may be missing fixes without knowing it.
pub fn catalog(dir: &Path) -> Check {
    let why = "signed, expiring catalog metadata proves the server is not withholding fixes";
    let fix = "ask the publisher for fresh metadata (hotpatch catalog sign) and upload it to the server";
    match crate::guard::metadata::last_status(dir) {
        Ok(None) | Ok(Some(crate::guard::CatalogStatus { version: None, stale_since: None, problem: None, .. })) => {
            check("catalog", State::Warning, "no signed catalog metadata received yet", why).fix(fix)
        }
        Ok(Some(status)) => match status.describe() {
            Some(d) => check("catalog", State::Warning, d, why).fix(fix),
            None => {
                let expires = status.expires.unwrap_or_default();
                let detail = match status.version {
                    Some(v) => format!("catalog metadata version {v} valid until {expires}"),
                    // A summary of several publishers: the first to expire.
                    None => format!("every publisher's catalog metadata valid, the first until {expires}"),
                };
                check("catalog", State::Ok, detail, why)
            }
        },
        Err(e) => check("catalog", State::Warning, e.to_string(), why),
    }
}

/// Debug roots give the addresses of a stripped target's functions: a root
/// another user could write into could steer where jumps are written.
pub fn debug_roots() -> Check {
    let why = "symbols of stripped targets come from debug files found under these directories";
    let roots: Vec<std::path::PathBuf> = hotpatch_engine::debug_roots().into_iter().filter(|r| r.exists()).collect();
    if roots.is_empty() {
        return check("debug-roots", State::Ok, "no debug root present (targets need their own .symtab)", why);
    }
    let unsafe_roots: Vec<String> =
        roots.iter().filter_map(|r| crate::trust::check_safe(r, "debug root").err().map(|e| e.to_string())).collect();
    if unsafe_roots.is_empty() {
        let list: Vec<String> = roots.iter().map(|r| r.display().to_string()).collect();
        check("debug-roots", State::Ok, list.join(", "), why)
    } else {
        check("debug-roots", State::Failed, unsafe_roots.join("; "), why)
            .fix("make each debug root root-owned and not group/world-writable, or leave it out of HOTPATCH_DEBUG_DIRS")
    }
}
