//! Smoke test 4, isolation from the guest: the redirect metadata cannot be read or forged,
//! and no name, symlink or special file reaches the host.
//!
//! 1. Before the boot the host puts a secret file next to the guest tree
//!    (`<base>/secret.txt`, beside `<base>/tree` and `<base>/store`).
//! 2. The guest's `smoke-isolation` scenario (guest-images/guest/scenarios/smoke-isolation.sh)
//!    works in `iso/`: listing a stub's xattrs shows no redirect metadata; getting
//!    `trusted.fsredirect` or `user.fsredirect` fails, and setting or removing them is
//!    refused, while the guest's own `user.note` works; reading `../secret.txt`, a relative
//!    symlink out of the tree and an absolute symlink to the secret's host path never shows
//!    the secret; names with dots stay names; a character device, a block device and a FIFO
//!    made in the share are the guest's own (writing the char device 1,3 reaches the guest's
//!    null driver); a setuid chmod succeeds in the guest's view. It passes.
//! 3. On the host the secret is unchanged and nothing appeared next to the tree and store.
//! 4. The special files are inert: empty regular host files whose metadata records the
//!    guest's type and device number, with nothing stored for them.
//! 5. The symlinks are stored as the guest wrote them (never followed on the host).
//! 6. Every stored object in the volume is a regular file with mode 600 (no setuid), and the
//!    redirected file's metadata is the engine's, not the guest's forgery.
//! 7. `fsredirect verify` reports nothing.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use super::common::{self, HostShare, SECRET};
use fsredirect::meta::Meta;

/// The guest scenario of this test.
pub const SCENARIO: &str = "smoke-isolation";

/// The absolute symlink the guest makes: the secret's path inside the test host.
const ABSOLUTE_TARGET: &str = "/share/smoke/secret.txt";

/// Step 1: puts the secret next to the tree and store under `base`.
pub fn plant_secret(base: &Path) -> Result<(), String> {
    let share = HostShare {
        base: base.to_owned(),
    };
    fs::create_dir_all(base).map_err(|e| format!("create {}: {e}", base.display()))?;
    fs::write(share.secret(), SECRET)
        .map_err(|e| format!("write {}: {e}", share.secret().display()))
}

/// Steps 3-7 on `share`, after the guest passed step 2.
pub fn check(share: &HostShare) -> Result<String, String> {
    // 3. The secret and the base directory.
    let secret = fs::read(share.secret()).map_err(|e| format!("read the secret: {e}"))?;
    if secret != SECRET {
        return Err(format!("{} changed", share.secret().display()));
    }
    let mut names: Vec<String> = fs::read_dir(&share.base)
        .map_err(|e| format!("list {}: {e}", share.base.display()))?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    if names != ["secret.txt", "store", "tree"] {
        return Err(format!(
            "{} holds {names:?}; only secret.txt, store and tree belong there",
            share.base.display()
        ));
    }

    // 4. Special files.
    let specials = [
        ("iso/null", libc::S_IFCHR, (1, 3)),
        ("iso/disk", libc::S_IFBLK, (8, 0)),
        ("iso/fifo", libc::S_IFIFO, (0, 0)),
    ];
    for (rel, kind, (major, minor)) in specials {
        let path = share.tree().join(rel);
        let meta = fs::symlink_metadata(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        if !meta.file_type().is_file() || meta.len() != 0 {
            return Err(format!(
                "{} is a {:?} of {} bytes on the host; expected an empty regular file",
                path.display(),
                meta.file_type(),
                meta.len()
            ));
        }
        let want_rdev = libc::makedev(major, minor);
        match common::read_meta(&path)? {
            Some(Meta::Special { kind: k, rdev }) if k == kind && u64::from(rdev) == want_rdev => {}
            other => {
                return Err(format!(
                    "{} has metadata {other:?}; expected the guest's type {kind:o} and device \
                     {major},{minor}",
                    path.display()
                ))
            }
        }
        if fs::symlink_metadata(share.volume().join(rel)).is_ok() {
            return Err(format!(
                "the store holds an object for the special file {rel}"
            ));
        }
    }

    // 5. Symlinks.
    for (rel, target) in [
        ("iso/up", "../../secret.txt"),
        ("iso/up-abs", ABSOLUTE_TARGET),
    ] {
        let path = share.tree().join(rel);
        let got = fs::read_link(&path).map_err(|e| format!("readlink {}: {e}", path.display()))?;
        if got != Path::new(target) {
            return Err(format!(
                "{} points to {}, not {target}",
                path.display(),
                got.display()
            ));
        }
        if fs::symlink_metadata(share.volume().join(rel)).is_ok() {
            return Err(format!("the store holds an object for the symlink {rel}"));
        }
    }

    // 6. Stored objects, the redirected file, names with dots.
    common::check_redirected(share, "iso/plain.txt", b"plain\n")?;
    common::check_redirected(share, "iso/dots/a..b", b"dots\n")?;
    common::check_redirected(share, "iso/dots/...", b"dots\n")?;
    let objects = common::regular_files(&share.volume())?;
    for rel in &objects {
        let path = share.volume().join(rel);
        let meta = fs::symlink_metadata(&path).map_err(|e| e.to_string())?;
        if meta.permissions().mode() & 0o7777 != 0o600 || meta.uid() != current_uid() {
            return Err(format!(
                "stored object {} has mode {:o} and owner {}; expected 600 and this process's \
                 user",
                path.display(),
                meta.permissions().mode() & 0o7777,
                meta.uid()
            ));
        }
    }

    // 7.
    common::check_verify_clean(share)?;
    Ok(format!(
        "secret untouched, special files inert, symlinks not followed, {} stored objects all \
         private (600); verify clean",
        objects.len()
    ))
}

fn current_uid() -> u32 {
    // SAFETY: getuid has no preconditions and cannot fail.
    unsafe { libc::getuid() }
}
