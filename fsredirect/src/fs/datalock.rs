//! Per-inode data locks: whatever changes a redirected file's size (WRITE, SETATTR of the size,
//! fallocate, open with O_TRUNC) holds its inode's lock exclusively from the store object's
//! change to the stub's, so two such requests in flight together can never leave the stub
//! and the object at different sizes. A READ of a redirected file holds it shared, so that it
//! sees a truncate or a write whole or not at all, as POSIX asks of read and truncate on a
//! regular file (a host read racing a truncate may copy bytes the truncate is zeroing).
//!
//! READ and WRITE through the passthrough layer (inline files, passthrough shares) take the
//! same lock, shared and exclusive: that layer sets each request's flags on the handle's
//! descriptor, and a request with other flags must not clear O_APPEND between an appending
//! write's flag change and its pwrite (`passthrough_io_flags` in `ops.rs`).
//!
//! A fixed set of striped locks, indexed by inode: bounded memory whatever the guest opens,
//! nothing to clean up at forget, and two inodes share a stripe only by chance (they then
//! wait for each other, which is correct, only slower).

use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};

/// Number of stripes: enough that unrelated files rarely wait for each other with the few
/// request threads a server runs.
const STRIPES: usize = 64;

/// The set of data locks of one share.
#[derive(Debug)]
pub(super) struct DataLocks {
    stripes: [RwLock<()>; STRIPES],
}

/// Proof that the caller holds the data lock of an inode exclusively.
pub(super) struct DataGuard<'a> {
    _guard: RwLockWriteGuard<'a, ()>,
}

/// The data lock of an inode, held shared by a reader.
pub(super) struct ReadGuard<'a> {
    _guard: RwLockReadGuard<'a, ()>,
}

impl Default for DataLocks {
    fn default() -> Self {
        DataLocks {
            stripes: std::array::from_fn(|_| RwLock::new(())),
        }
    }
}

impl DataLocks {
    /// Takes the data lock of `inode` exclusively. Always taken after the namespace lock,
    /// never before it.
    pub(super) fn lock(&self, inode: u64) -> DataGuard<'_> {
        let stripe = &self.stripes[stripe_of(inode)];
        // The lock guards no data of its own: a panic while holding it leaves nothing
        // half-written, so a poisoned stripe is still usable.
        DataGuard {
            _guard: stripe.write().unwrap_or_else(|p| p.into_inner()),
        }
    }

    /// Takes the data lock of `inode` shared, for a read; after the namespace lock, as
    /// [`DataLocks::lock`].
    pub(super) fn read(&self, inode: u64) -> ReadGuard<'_> {
        let stripe = &self.stripes[stripe_of(inode)];
        ReadGuard {
            _guard: stripe.read().unwrap_or_else(|p| p.into_inner()),
        }
    }
}

/// The stripe of `inode`. Node ids are dense small numbers, possibly with high tag bits: they
/// are mixed first so that neighbours spread.
fn stripe_of(inode: u64) -> usize {
    (inode.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 58) as usize % STRIPES
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_inode_is_serialized() {
        let locks = DataLocks::default();
        let held = locks.lock(7);
        assert!(locks.stripes[stripe_of(7)].try_read().is_err());
        drop(held);
        let reading = locks.read(7);
        let _other_reader = locks.read(7);
        assert!(locks.stripes[stripe_of(7)].try_write().is_err());
        drop(reading);
    }

    #[test]
    fn neighbouring_inodes_spread_over_stripes() {
        let used: std::collections::HashSet<usize> = (1..=64u64).map(stripe_of).collect();
        assert!(used.len() > 32, "{} stripes for 64 inodes", used.len());
    }
}
