//! The store's one error type.

use std::fmt;

/// Why the store could not do what it was asked. Each `Display` is one short sentence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreError {
    /// The queue to the writer thread is full (`Limits`): the op was not taken. The broker
    /// answers `503`; nothing is wrong with the store.
    Busy,
    /// Reading or writing the store failed. Once a write has failed, the store is failed for
    /// good: every later `submit` and `flush` answers this same error (see the crate docs).
    Io(String),
    /// A stored record cannot be read: `reason` says why. `id` and `seq` are 0 when the key
    /// itself is unreadable.
    Corrupt {
        /// The record's id.
        id: u32,
        /// The record's seq.
        seq: u64,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The path exists but is not a fedbroker store (a file, a folder with other contents, or
    /// a store of a format this version does not know).
    NotAStore(String),
    /// Another process (or another `Store` in this one) has the store open.
    Locked(String),
    /// The store's writer thread is gone (it stopped after a panic in a `done` callback).
    Closed,
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreError::Busy => f.write_str("the message store is busy; try again later"),
            StoreError::Io(e) => write!(f, "the message store failed: {e}"),
            StoreError::Corrupt { id, seq, reason } => {
                write!(f, "stored record {seq} of id {id} is corrupt: {reason}")
            }
            StoreError::NotAStore(why) => write!(f, "not a fedbroker store: {why}"),
            StoreError::Locked(path) => write!(f, "the store {path} is in use by another process"),
            StoreError::Closed => f.write_str("the message store is closed"),
        }
    }
}

impl std::error::Error for StoreError {}

impl From<fjall::Error> for StoreError {
    fn from(e: fjall::Error) -> Self {
        StoreError::Io(e.to_string())
    }
}

impl From<std::io::Error> for StoreError {
    fn from(e: std::io::Error) -> Self {
        StoreError::Io(e.to_string())
    }
}
