//! A seam in the store layer for tests: every store operation the engine performs (object
//! data writes, size changes, syncs, namespace changes, intent records, and the guest-tree
//! side of moving a file between tree and store) is first shown to an
//! optional [`StoreHook`], which may fail it (ENOSPC, EIO, ...), shorten a write, or record
//! it. Without a hook (production) the check is one branch on a `None`.
//!
//! Two hooks come with the crate for tests (feature `test-utils`, or the crate's own tests):
//! - `FaultPlan` injects an errno or short writes into one kind of operation, to prove that
//!   a failing store gives the guest an errno and leaves stubs that agree with their data;
//! - `PowerLoss` simulates a power cut at a chosen operation: it remembers the content each
//!   object had when it was last synced and, at the cut, writes those contents back, so the
//!   store holds only what a real disk would have kept (see its docs for the model).

use std::fmt;
use std::fs::File;
use std::io;
use std::sync::Arc;

/// A namespace change in the store (or its control area).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Namespace {
    /// An object is created.
    Create,
    /// A directory is created on the way to an object.
    Mkdir,
    /// A hard link is made.
    Link,
    /// An object or directory is renamed (or two are exchanged).
    Rename,
    /// An object or directory is removed.
    Remove,
    /// An object moves to or from the orphan area, or an orphan is removed.
    Orphan,
    /// An intent record is created.
    IntentRecord,
    /// An intent record is removed (its operation is complete).
    IntentDone,
    /// The clean-stop marker is written or removed.
    CleanMarker,
}

/// One store operation the engine is about to perform.
pub enum StoreOp<'a> {
    /// `len` bytes are written at `offset` into an object, an intent record, or a guest-tree
    /// file taking its data back from the store.
    Write {
        /// The file.
        file: &'a File,
        /// Where.
        offset: u64,
        /// How many bytes.
        len: usize,
    },
    /// An object is cut or extended to `size`.
    SetLen {
        /// The object.
        file: &'a File,
        /// The new size.
        size: u64,
    },
    /// Space is allocated (or punched) in an object.
    Fallocate {
        /// The object.
        file: &'a File,
    },
    /// An object, record or moving guest-tree file is synced: fdatasync with `data_only`,
    /// fsync otherwise.
    Sync {
        /// The file.
        file: &'a File,
        /// fdatasync rather than fsync.
        data_only: bool,
    },
    /// A directory of the store, its control area or the guest tree is synced.
    SyncDir,
    /// The redirect metadata of a guest-tree file is set or removed (a file moving between
    /// tree and store).
    Meta {
        /// The guest-tree file.
        file: &'a File,
        /// The attribute holding the metadata.
        name: &'a std::ffi::CStr,
    },
    /// Every data block of a guest-tree file is freed, its size kept (a file moving into the
    /// store).
    Punch {
        /// The guest-tree file.
        file: &'a File,
    },
    /// The whole store file system is synced.
    SyncFs,
    /// A namespace change.
    Namespace(Namespace),
}

impl StoreOp<'_> {
    /// The kind of operation, without its file.
    pub fn kind(&self) -> OpKind {
        match self {
            StoreOp::Write { .. } => OpKind::Write,
            StoreOp::SetLen { .. } => OpKind::SetLen,
            StoreOp::Fallocate { .. } => OpKind::Fallocate,
            StoreOp::Sync { .. } => OpKind::Sync,
            StoreOp::SyncDir => OpKind::SyncDir,
            StoreOp::SyncFs => OpKind::SyncFs,
            StoreOp::Meta { .. } => OpKind::Meta,
            StoreOp::Punch { .. } => OpKind::Punch,
            StoreOp::Namespace(n) => OpKind::Namespace(*n),
        }
    }
}

impl fmt::Debug for StoreOp<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreOp::Write { offset, len, .. } => write!(f, "Write({offset}, {len})"),
            StoreOp::SetLen { size, .. } => write!(f, "SetLen({size})"),
            other => write!(f, "{:?}", other.kind()),
        }
    }
}

/// The kind of a [`StoreOp`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OpKind {
    /// [`StoreOp::Write`].
    Write,
    /// [`StoreOp::SetLen`].
    SetLen,
    /// [`StoreOp::Fallocate`].
    Fallocate,
    /// [`StoreOp::Sync`].
    Sync,
    /// [`StoreOp::SyncDir`].
    SyncDir,
    /// [`StoreOp::SyncFs`].
    SyncFs,
    /// [`StoreOp::Meta`].
    Meta,
    /// [`StoreOp::Punch`].
    Punch,
    /// [`StoreOp::Namespace`].
    Namespace(Namespace),
}

/// Sees every store operation before it happens.
pub trait StoreHook: Send + Sync {
    /// Called before `op`. `Err` fails the operation with that error instead of doing it;
    /// `Ok(Some(n))` shortens a write to `n` bytes (less than asked); `Ok(None)` lets it run.
    fn before(&self, op: &StoreOp<'_>) -> io::Result<Option<usize>>;
}

/// An optional hook, as the store holds it: `Hook::default()` is none (production).
#[derive(Clone, Default)]
pub struct Hook(Option<Arc<dyn StoreHook>>);

impl Hook {
    /// A hook that shows every operation to `hook`.
    pub fn new(hook: Arc<dyn StoreHook>) -> Self {
        Hook(Some(hook))
    }

    /// Shows `op` to the hook, if any (see [`StoreHook::before`]).
    #[inline]
    pub fn check(&self, op: &StoreOp<'_>) -> io::Result<Option<usize>> {
        match &self.0 {
            None => Ok(None),
            Some(hook) => hook.before(op),
        }
    }

    /// True if a hook is installed.
    pub fn is_set(&self) -> bool {
        self.0.is_some()
    }
}

impl fmt::Debug for Hook {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0.is_some() {
            "Hook(set)"
        } else {
            "Hook(none)"
        })
    }
}

#[cfg(any(test, feature = "test-utils"))]
mod simulate;
#[cfg(any(test, feature = "test-utils"))]
pub use simulate::{Fault, FaultPlan, PowerLoss};
