//! What a redirecting share has beside its guest tree: the store volume (opened, and
//! recovered after an unclean stop), the policy that places files, and the descriptors
//! cached for redirected files. A passthrough share has none of it: `RedirectFs` holds an
//! `Option<Redirecting>`, and each place where the two kinds of share behave differently
//! asks for it once.

use crate::fdcache::FdCache;
use crate::policy::Policy;
use crate::recover::RecoveryReport;
use crate::share::{ShareSpec, StoreSpec};
use crate::store::Store;

use super::{FsConfig, FsError, Result};

/// The redirecting part of a share (see the module docs).
pub(super) struct Redirecting {
    /// The volume holding the objects.
    pub store: Store,
    /// Which files are redirected.
    pub policy: Policy,
    /// The volume's name, as stubs record it.
    pub volume: Vec<u8>,
    /// Store objects held open, bounded (`FsConfig::max_store_fds`).
    pub objects: FdCache,
    /// Stubs of redirected files held open for size and time updates, bounded the same.
    pub stubs: FdCache,
}

impl Redirecting {
    /// Opens the volume `spec` names for `share` (making it if new) and, after an unclean
    /// stop, recovers it; returns what recovery did, if it ran.
    pub fn open(
        share: &ShareSpec,
        spec: &StoreSpec,
        cfg: &FsConfig,
    ) -> Result<(Self, Option<RecoveryReport>)> {
        let store = Store::open_with(&spec.root, &spec.volume, cfg.hook())?;
        let ordered = crate::intent::shares_one_journal(&share.dir, store.volume_path());
        store.intents().set_journal_ordered(ordered);
        log::info!(
            "intent records: {}",
            if ordered {
                "in journal order (guest tree and store share one journaling file system)"
            } else {
                "synced one by one (guest tree and store on different file systems)"
            }
        );
        let recovery_failed = |source| FsError::Recovery {
            dir: share.dir.clone(),
            source,
        };
        // Records left after a clean stop belong to operations whose store half failed.
        let leftovers = store.intents().has_leftovers().map_err(recovery_failed)?;
        let mut recovery = None;
        if store.was_created() {
            log::info!(
                "new volume {} in {}: nothing to recover",
                spec.volume,
                store.volume_path().display()
            );
        } else if store.was_clean() && !leftovers {
            // Files still open at a clean stop leave their objects in the orphan area; a stop
            // cut short after its marker may leave idle intent slots.
            store.clear_orphans()?;
            store
                .intents()
                .remove_idle_slots()
                .map_err(recovery_failed)?;
        } else {
            let report = crate::recover::run(&share.dir, &store).map_err(recovery_failed)?;
            log::info!(
                "recovery of {} after an unclean stop: {report}",
                share.dir.display()
            );
            recovery = Some(report);
        }
        let redirecting = Redirecting {
            store,
            policy: spec.policy.clone(),
            volume: spec.volume.clone().into_bytes(),
            objects: FdCache::new(cfg.max_store_fds),
            stubs: FdCache::new(cfg.max_store_fds),
        };
        Ok((redirecting, recovery))
    }
}
