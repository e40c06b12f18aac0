//! A bounded cache of open store objects: however many files the guest opens, the server holds
//! at most `capacity` store descriptors, evicting the least recently used and reopening on
//! demand.

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// LRU map from inode to an open store object.
#[derive(Debug)]
pub struct FdCache {
    capacity: usize,
    /// What one entry is, for the log.
    what: &'static str,
    entries: Mutex<Entries>,
    evictions: AtomicU64,
}

#[derive(Debug, Default)]
struct Entries {
    map: HashMap<u64, (Arc<File>, u64)>,
    tick: u64,
}

impl FdCache {
    /// A cache of store objects holding at most `capacity` descriptors (at least one).
    pub fn new(capacity: usize) -> Self {
        FdCache::named(capacity, "store descriptor")
    }

    /// A cache of `what` (for the log: "directory descriptor", say) holding at most
    /// `capacity` descriptors (at least one).
    pub fn named(capacity: usize, what: &'static str) -> Self {
        FdCache {
            capacity: capacity.max(1),
            what,
            entries: Mutex::new(Entries::default()),
            evictions: AtomicU64::new(0),
        }
    }

    /// The open object for `key`, opening it with `open` if it is not cached.
    pub fn get(&self, key: u64, open: impl FnOnce() -> io::Result<File>) -> io::Result<Arc<File>> {
        {
            let mut e = self.lock();
            e.tick += 1;
            let tick = e.tick;
            if let Some((file, used)) = e.map.get_mut(&key) {
                *used = tick;
                return Ok(file.clone());
            }
        }
        // Open outside the lock: it is a syscall and may be slow.
        let file = Arc::new(open()?);
        let mut e = self.lock();
        e.tick += 1;
        let tick = e.tick;
        if let Some((cached, used)) = e.map.get_mut(&key) {
            *used = tick;
            return Ok(cached.clone());
        }
        if e.map.len() >= self.capacity {
            if let Some(victim) = e
                .map
                .iter()
                .min_by_key(|(_, (_, used))| *used)
                .map(|(k, _)| *k)
            {
                e.map.remove(&victim);
                let n = self.evictions.fetch_add(1, Ordering::Relaxed) + 1;
                if n == 1 || n.is_power_of_two() {
                    log::info!(
                        "{} bound of {} reached: {} evictions so far",
                        self.what,
                        self.capacity,
                        n
                    );
                }
            }
        }
        e.map.insert(key, (file.clone(), tick));
        Ok(file)
    }

    /// The cached object for `key`, if there is one; nothing is opened.
    pub fn cached(&self, key: u64) -> Option<Arc<File>> {
        let mut e = self.lock();
        e.tick += 1;
        let tick = e.tick;
        let (file, used) = e.map.get_mut(&key)?;
        *used = tick;
        Some(file.clone())
    }

    /// Drops the cached object for `key`, if any.
    pub fn remove(&self, key: u64) {
        self.lock().map.remove(&key);
    }

    /// Drops every cached object.
    pub fn clear(&self) {
        self.lock().map.clear();
    }

    /// How many descriptors are cached now.
    pub fn len(&self) -> usize {
        self.lock().map.len()
    }

    /// True if nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// How many descriptors were evicted to stay within the bound.
    pub fn evictions(&self) -> u64 {
        self.evictions.load(Ordering::Relaxed)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Entries> {
        // A panic while holding this lock leaves only a map of descriptors: still consistent.
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn devnull() -> io::Result<File> {
        File::open("/dev/null")
    }

    #[test]
    fn cache_never_exceeds_capacity() {
        let cache = FdCache::new(2);
        for key in 0..10 {
            cache.get(key, devnull).unwrap();
        }
        assert_eq!(cache.len(), 2);
        assert_eq!(cache.evictions(), 8);
    }

    #[test]
    fn cached_entry_is_reused_without_opening() {
        let cache = FdCache::new(2);
        let a = cache.get(1, devnull).unwrap();
        let b = cache
            .get(1, || panic!("must not reopen a cached entry"))
            .unwrap();
        assert!(Arc::ptr_eq(&a, &b));
    }

    #[test]
    fn cached_opens_nothing_and_counts_as_a_use() {
        let cache = FdCache::new(2);
        assert!(cache.cached(1).is_none());
        assert!(cache.is_empty(), "a miss opens nothing");
        let a = cache.get(1, devnull).unwrap();
        cache.get(2, devnull).unwrap();
        assert!(Arc::ptr_eq(&a, &cache.cached(1).unwrap()));
        // 1 was used after 2, so 2 goes first.
        cache.get(3, devnull).unwrap();
        assert!(cache.cached(1).is_some());
        assert!(cache.cached(2).is_none());
    }

    #[test]
    fn least_recently_used_is_evicted() {
        let cache = FdCache::new(2);
        cache.get(1, devnull).unwrap();
        cache.get(2, devnull).unwrap();
        cache.get(1, devnull).unwrap();
        cache.get(3, devnull).unwrap();
        // 1 was used after 2, so 2 went.
        cache.get(1, || panic!("1 should still be cached")).unwrap();
        let mut reopened = false;
        cache
            .get(2, || {
                reopened = true;
                devnull()
            })
            .unwrap();
        assert!(reopened);
    }

    #[test]
    fn open_failure_is_reported_and_not_cached() {
        let cache = FdCache::new(2);
        assert!(cache
            .get(1, || Err(io::Error::from_raw_os_error(libc::EIO)))
            .is_err());
        assert!(cache.is_empty());
    }
}
