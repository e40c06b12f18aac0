//! The host descriptors a share lets its guest make the server hold.
//!
//! Every handle the guest opens (file or directory), every stub kept alive for a file unlinked
//! while open and, when inodes are not referenced by file handle, every inode the guest has
//! looked up costs the server one descriptor. A guest that opens without releasing must hit a
//! limit of its own, answered with EMFILE, long before the process runs out: the server keeps
//! a reserve for its own work (store objects, stubs, intent records, directory walks), so
//! LOOKUP, CREATE and MKDIR of other callers, recovery and the clean stop always proceed.
//!
//! The limit comes from `RLIMIT_NOFILE` less that reserve; [`raise_nofile_limit`] lifts the
//! soft limit to the hard one first, as a server binary should at start.

use std::io;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

/// Descriptors kept for the server's own work beyond its descriptor caches.
const SERVER_RESERVE: usize = 128;

/// Smallest guest budget: below it a share is unusable, so it is kept even if the process
/// limit is lower (the process may then run out, and says so with EMFILE).
const MIN_GUEST_FDS: usize = 64;

/// A count of descriptors held for the guest, against a limit.
#[derive(Debug)]
pub struct FdBudget {
    limit: usize,
    used: AtomicUsize,
    refusals: AtomicU64,
}

impl FdBudget {
    /// A budget of `limit` descriptors.
    pub fn new(limit: usize) -> Self {
        FdBudget {
            limit,
            used: AtomicUsize::new(0),
            refusals: AtomicU64::new(0),
        }
    }

    /// The budget left by the process's `RLIMIT_NOFILE` after the server's reserve: its
    /// descriptor caches (`cached`: store objects, stubs, hot inodes) and 128 more.
    pub fn from_rlimit(cached: usize) -> Self {
        let reserve = cached.saturating_add(SERVER_RESERVE);
        let nofile = nofile_limit().unwrap_or(1024);
        let limit = nofile.saturating_sub(reserve).max(MIN_GUEST_FDS);
        if nofile < reserve + MIN_GUEST_FDS {
            log::warn!(
                "RLIMIT_NOFILE is {nofile}: the guest may hold only {limit} descriptors and the \
                 server's reserve of {reserve} is not guaranteed; raise it (ulimit -n)"
            );
        }
        FdBudget::new(limit)
    }

    /// The most descriptors the guest may make the server hold.
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Descriptors held for the guest now.
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    /// Fails with EMFILE if the guest holds all it may. Checked before the request, charged
    /// after it succeeds: requests in flight together may pass the limit by their number,
    /// which the server's reserve absorbs.
    pub fn check(&self) -> io::Result<()> {
        if self.used() < self.limit {
            return Ok(());
        }
        let n = self.refusals.fetch_add(1, Ordering::Relaxed) + 1;
        if n == 1 || n.is_power_of_two() {
            log::warn!(
                "the guest holds {} host descriptors, its limit: EMFILE ({n} refusals so far)",
                self.limit
            );
        }
        Err(io::Error::from_raw_os_error(libc::EMFILE))
    }

    /// Counts `n` more descriptors held for the guest.
    pub fn charge(&self, n: usize) {
        self.used.fetch_add(n, Ordering::Relaxed);
    }

    /// Gives back everything: the session that held it ended.
    pub fn reset(&self) {
        self.used.store(0, Ordering::Relaxed);
    }

    /// Counts `n` descriptors given back.
    pub fn release(&self, n: usize) {
        // Never below zero, whatever order releases arrive in.
        let _ = self
            .used
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |u| {
                Some(u.saturating_sub(n))
            });
    }
}

/// The soft `RLIMIT_NOFILE` of this process.
pub fn nofile_limit() -> io::Result<usize> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one rlimit into `lim`.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(usize::try_from(lim.rlim_cur).unwrap_or(usize::MAX))
}

/// Raises the soft `RLIMIT_NOFILE` to the hard limit and returns the new soft limit. A server
/// binary calls it once at start, before building its shares.
pub fn raise_nofile_limit() -> io::Result<usize> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one rlimit into `lim`.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(io::Error::last_os_error());
    }
    if lim.rlim_cur < lim.rlim_max {
        lim.rlim_cur = lim.rlim_max;
        // SAFETY: setrlimit reads one rlimit; raising the soft limit up to the hard one needs
        // no privilege.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) } != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(usize::try_from(lim.rlim_cur).unwrap_or(usize::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_budget_refuses_with_emfile() {
        let budget = FdBudget::new(2);
        budget.check().unwrap();
        budget.charge(2);
        assert_eq!(
            budget.check().unwrap_err().raw_os_error(),
            Some(libc::EMFILE)
        );
        budget.release(1);
        budget.check().unwrap();
    }

    #[test]
    fn release_never_goes_below_zero() {
        let budget = FdBudget::new(2);
        budget.release(5);
        assert_eq!(budget.used(), 0);
    }

    #[test]
    fn rlimit_budget_keeps_the_server_reserve() {
        let nofile = nofile_limit().unwrap();
        let budget = FdBudget::from_rlimit(512);
        assert!(budget.limit() >= MIN_GUEST_FDS);
        if nofile >= 640 + MIN_GUEST_FDS {
            assert_eq!(budget.limit(), nofile - 640);
        }
    }
}
