//! What crosses the network between an agent and the server, pure and shared by
//! both sides: the machine's key pair and the signature over each request.
//!
//! A machine proves itself with an ed25519 key it made at enrollment; the server
//! keeps only the public half, so a copy of the server's database holds no
//! machine secret. Each request carries the machine id, a sequence number and a
//! signature over method, path, machine id, sequence and the body's SHA-256.
//! The server accepts a sequence only if it is above the last one it accepted
//! from that machine, so a captured request replayed later is refused, and a
//! changed byte anywhere in it fails the signature.

mod key;
mod request;

pub use key::{MachineKey, MachinePublicKey};
pub use request::{RequestSignature, WireError, next_sequence, signed_message, signed_path};

/// Header naming the machine that signed the request.
pub const HEADER_MACHINE: &str = "x-hotpatch-machine";
/// Header carrying the request's sequence number (decimal).
pub const HEADER_SEQUENCE: &str = "x-hotpatch-sequence";
/// Header carrying the request's ed25519 signature (hex).
pub const HEADER_SIGNATURE: &str = "x-hotpatch-signature";
