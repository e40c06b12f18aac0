//! The test host's share disk (an ext4 image), mounted on this host through a loop device so
//! that host-side checks see the guest tree and the store exactly as the test host left them.

use std::io;
use std::path::{Path, PathBuf};
use std::process::Command;

/// A mounted share disk; unmounted (and its loop device freed) on drop.
#[derive(Debug)]
pub struct ShareDiskMount {
    at: PathBuf,
}

impl ShareDiskMount {
    /// Mounts `disk` at `at` (created if missing), read-write. Needs root. Only call it while
    /// no test-host run uses the disk: two writers of one ext4 image corrupt it.
    pub fn mount(disk: &Path, at: &Path) -> io::Result<Self> {
        if !disk.is_file() {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!(
                    "share disk {} does not exist; guest-images/build-testhost.sh makes it",
                    disk.display()
                ),
            ));
        }
        std::fs::create_dir_all(at)?;
        // `-o loop` lets mount pick a free loop device and free it again at umount.
        let out = Command::new("mount")
            .arg("-o")
            .arg("loop")
            .arg(disk)
            .arg(at)
            .output()?;
        if !out.status.success() {
            return Err(io::Error::other(format!(
                "mount -o loop {} {} failed ({}): {}; it needs root and a free /dev/loop*",
                disk.display(),
                at.display(),
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        Ok(Self { at: at.to_owned() })
    }

    /// Where the disk is mounted.
    pub fn path(&self) -> &Path {
        &self.at
    }

    /// Leaves the disk mounted after this value is gone (for people to look at it; they
    /// unmount it with `umount`).
    pub fn keep_mounted(self) -> PathBuf {
        let at = self.at.clone();
        std::mem::forget(self);
        at
    }
}

/// The loop devices backed by `disk` (from `losetup -j`): a mounted share disk has one.
/// Empty when there are none or `losetup` cannot say.
pub fn loop_devices_of(disk: &Path) -> Vec<String> {
    let Ok(out) = Command::new("losetup").arg("-j").arg(disk).output() else {
        return Vec::new();
    };
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split(':').next())
        .filter(|d| !d.is_empty())
        .map(str::to_owned)
        .collect()
}

impl Drop for ShareDiskMount {
    fn drop(&mut self) {
        match Command::new("umount").arg(&self.at).output() {
            Ok(out) if out.status.success() => {}
            Ok(out) => eprintln!(
                "share disk: umount {} failed: {}",
                self.at.display(),
                String::from_utf8_lossy(&out.stderr).trim()
            ),
            Err(e) => eprintln!("share disk: cannot run umount {}: {e}", self.at.display()),
        }
    }
}
