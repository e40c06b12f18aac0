//! Per-inode data locks: whatever changes a redirected file's size (WRITE, SETATTR of the size,
//! fallocate, open with O_TRUNC) holds its inode's lock from the store object's change to the
//! stub's, so two such requests in flight together can never leave the stub and the object
//! at different sizes.
//!
//! A fixed set of striped mutexes, indexed by inode: bounded memory whatever the guest opens,
//! nothing to clean up at forget, and two inodes share a stripe only by chance (they then
//! wait for each other, which is correct, only slower).

use std::sync::{Mutex, MutexGuard};

/// Number of stripes: enough that unrelated files rarely wait for each other with the few
/// request threads a server runs.
const STRIPES: usize = 64;

/// The set of data locks of one share.
#[derive(Debug)]
pub(super) struct DataLocks {
    stripes: [Mutex<()>; STRIPES],
}

/// Proof that the caller holds the data lock of an inode.
pub(super) struct DataGuard<'a> {
    _guard: MutexGuard<'a, ()>,
}

impl Default for DataLocks {
    fn default() -> Self {
        DataLocks {
            stripes: std::array::from_fn(|_| Mutex::new(())),
        }
    }
}

impl DataLocks {
    /// Takes the data lock of `inode`. Always taken after the namespace lock, never before it.
    pub(super) fn lock(&self, inode: u64) -> DataGuard<'_> {
        let stripe = &self.stripes[stripe_of(inode)];
        // The lock guards no data of its own: a panic while holding it leaves nothing
        // half-written, so a poisoned stripe is still usable.
        DataGuard {
            _guard: stripe.lock().unwrap_or_else(|p| p.into_inner()),
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
        let _held = locks.lock(7);
        assert!(locks.stripes[stripe_of(7)].try_lock().is_err());
    }

    #[test]
    fn neighbouring_inodes_spread_over_stripes() {
        let used: std::collections::HashSet<usize> = (1..=64u64).map(stripe_of).collect();
        assert!(used.len() > 32, "{} stripes for 64 inodes", used.len());
    }
}
