use std::io;

/// Why the engine refused or failed. Every refusal before the transition
/// leaves the process exactly as it was; the message names what was wrong.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("process {0} does not exist or exited")]
    ProcessExited(i32),
    #[error("permission denied on process {pid}: {detail} ({why})")]
    PermissionDenied { pid: i32, detail: String, why: String },
    #[error("process {pid} is already being traced by process {tracer} (a debugger?)")]
    Traced { pid: i32, tracer: i32 },
    #[error("ptrace {op} on thread {tid} failed: {source}")]
    Ptrace { tid: i32, op: &'static str, source: io::Error },
    #[error("{what}: {source}")]
    Io { what: String, source: io::Error },
    #[error("hotpatches for {0} are not supported yet (x86_64 only)")]
    UnsupportedMachine(String),
    #[error("process {pid} does not map a target with build-id {build_id} ({file_name})")]
    TargetNotMapped { pid: i32, build_id: String, file_name: String },
    #[error("{0}")]
    Symbol(String),
    #[error("function {function}: {problem}")]
    SiteMismatch { function: String, problem: String },
    #[error("link: {0}")]
    Link(#[from] hotpatch_link::LinkError),
    #[error("no room for a {size}-byte patch region within ±2 GiB of {target}")]
    NoRoom { size: u64, target: String },
    #[error("injected {call} in process {pid} failed: {detail}")]
    Inject { pid: i32, call: &'static str, detail: String },
    #[error(
        "busy: thread {tid} is inside {function} (checked for {waited_ms} ms, {attempts} attempts); try again later or with a longer --timeout"
    )]
    Busy { tid: i32, function: String, waited_ms: u64, attempts: u32 },
    #[error(
        "level {applied} of {patch_id} is already applied; only a higher level can replace it (this is level {offered})"
    )]
    LevelNotHigher { patch_id: String, applied: u32, offered: u32 },
    #[error("{0}")]
    NotApplied(String),
    #[error(
        "process {pid} keeps {regions} retired patch regions of {target} ({bytes} bytes); retiring one more would pass the cap of {max_regions} regions or {max_bytes} bytes: restart the process to reclaim them"
    )]
    RetiredCap { pid: i32, target: String, regions: usize, bytes: u64, max_regions: usize, max_bytes: u64 },
    #[error(
        "--scan-memory would read {bytes} bytes of process {pid}'s writable memory while it is stopped, more than the limit of {limit}; not applied"
    )]
    ScanTooLarge { pid: i32, bytes: u64, limit: u64 },
    #[error(
        "process {pid} declares its user-level stacks (hotpatch_user_stacks), but {problem}; refusing, as they cannot be checked"
    )]
    UserStacks { pid: i32, problem: String },
    #[error("{callback} in process {pid}: {problem}")]
    Callback { pid: i32, callback: String, problem: String },
    #[error("patch region at 0x{addr:x} is malformed: {problem}")]
    BadRegion { addr: u64, problem: String },
}

impl EngineError {
    pub(crate) fn io(what: impl Into<String>, source: io::Error) -> EngineError {
        EngineError::Io { what: what.into(), source }
    }

    /// A refusal by the kernel, with the likeliest reason read from the system.
    pub(crate) fn denied(pid: i32, detail: String) -> EngineError {
        let why = crate::access::explain(pid, &crate::access::AccessFacts::read(pid));
        EngineError::PermissionDenied { pid, detail, why }
    }

    /// Maps a `/proc/PID/...` access error to what it means for the user.
    pub(crate) fn proc_access(pid: i32, what: &str, source: io::Error) -> EngineError {
        match source.raw_os_error() {
            Some(libc::ENOENT) | Some(libc::ESRCH) => EngineError::ProcessExited(pid),
            Some(libc::EACCES) | Some(libc::EPERM) => EngineError::denied(pid, format!("{what}: {source}")),
            _ => EngineError::Io { what: format!("{what} of process {pid}"), source },
        }
    }
}
