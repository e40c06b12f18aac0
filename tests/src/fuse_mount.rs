//! Helpers for tests that mount a share on the host with `fsredirect mount` and drive it
//! through the real Linux FUSE client.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Why a test cannot run on this host, if it cannot.
pub fn fuse_unavailable() -> Option<String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("needs root to mount through /dev/fuse".into());
    }
    if !Path::new("/dev/fuse").exists() {
        return Some("/dev/fuse is missing (load the fuse module)".into());
    }
    None
}

/// The directory cargo builds into for this test binary's profile (`<target>/debug`).
pub fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    // <target>/<profile>/deps/<test>-<hash>
    exe.parent()
        .and_then(Path::parent)
        .expect("test binary inside a cargo target directory")
        .to_path_buf()
}

/// Builds and returns the `fsredirect` binary of this workspace.
pub fn fsredirect_bin() -> Result<PathBuf, String> {
    let profile = profile_dir();
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.args([
        "build",
        "--quiet",
        "-p",
        "fsredirect",
        "--bin",
        "fsredirect",
    ]);
    if profile.file_name().is_some_and(|n| n == "release") {
        cmd.arg("--release");
    }
    if let Some(target) = profile.parent() {
        cmd.env("CARGO_TARGET_DIR", target);
    }
    let status = cmd.status().map_err(|e| format!("cannot run cargo: {e}"))?;
    if !status.success() {
        return Err(format!("building fsredirect failed: {status}"));
    }
    Ok(profile.join("fsredirect"))
}

/// A temp directory with a guest tree, a store and a mount point.
pub struct ShareDirs {
    /// Keeps the directories alive.
    pub tmp: PathBuf,
    /// The guest tree.
    pub guest: PathBuf,
    /// The store root.
    pub store: PathBuf,
    /// Where the share is mounted.
    pub mnt: PathBuf,
}

impl ShareDirs {
    /// Creates fresh directories under the system temp dir.
    pub fn new(label: &str) -> Self {
        let tmp = std::env::temp_dir().join(format!("fsr-e2e-{label}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&tmp);
        let dirs = ShareDirs {
            guest: tmp.join("guest"),
            store: tmp.join("store"),
            mnt: tmp.join("mnt"),
            tmp,
        };
        for d in [&dirs.guest, &dirs.store, &dirs.mnt] {
            std::fs::create_dir_all(d).expect("create test directories");
        }
        // pjdfstest switches to unprivileged users that must reach the mount point.
        let _ = Command::new("chmod").arg("0755").arg(&dirs.tmp).status();
        dirs
    }

    /// The share description: redirecting into volume `vol`, or plain passthrough.
    pub fn spec(&self, redirect: bool) -> String {
        if redirect {
            format!(
                "tag=e2e,dir={},store={},volume=vol",
                self.guest.display(),
                self.store.display()
            )
        } else {
            format!("tag=e2e,dir={}", self.guest.display())
        }
    }
}

impl Drop for ShareDirs {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.tmp);
    }
}

/// A running `fsredirect mount`; unmounted with SIGTERM when dropped.
pub struct HostMount {
    child: Child,
    mnt: PathBuf,
}

/// True if `path` is a mount point now.
pub fn is_mounted(path: &Path) -> bool {
    let table = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let want = path.to_string_lossy();
    table
        .lines()
        .any(|l| l.split(' ').nth(4) == Some(want.as_ref()))
}

impl HostMount {
    /// Starts `fsredirect mount --share SPEC [EXTRA...] MNT` and waits until the mount is live.
    pub fn start(bin: &Path, spec: &str, extra: &[&str], mnt: &Path) -> Result<Self, String> {
        let child = Command::new(bin)
            .args(["mount", "--share", spec])
            .args(extra)
            .arg(mnt)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", bin.display()))?;
        let mut mount = HostMount {
            child,
            mnt: mnt.to_path_buf(),
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while !is_mounted(mnt) {
            if let Ok(Some(status)) = mount.child.try_wait() {
                return Err(format!("fsredirect mount exited early: {status}"));
            }
            if Instant::now() > deadline {
                return Err("fsredirect mount did not come up within 20 s".into());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(mount)
    }

    /// How many descriptors the server process holds now.
    pub fn open_fds(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.child.id()))
            .map(|d| d.count())
            .unwrap_or(0)
    }

    /// Kills the server with SIGKILL (no clean stop) and detaches the dead mount.
    pub fn kill(mut self) -> Result<(), String> {
        self.child
            .kill()
            .map_err(|e| format!("cannot kill fsredirect: {e}"))?;
        let _ = self.child.wait();
        let status = Command::new("umount")
            .arg("-l")
            .arg(&self.mnt)
            .status()
            .map_err(|e| format!("cannot run umount: {e}"))?;
        if !status.success() || is_mounted(&self.mnt) {
            return Err(format!("{} still mounted after kill", self.mnt.display()));
        }
        Ok(())
    }

    /// The server's resident memory in KiB (VmRSS), 0 if unknown.
    pub fn rss_kib(&self) -> u64 {
        std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    }

    /// Sends SIGTERM and waits for a clean exit; returns an error if the mount lingers.
    pub fn stop(mut self) -> Result<(), String> {
        self.stop_inner()
    }

    fn stop_inner(&mut self) -> Result<(), String> {
        if let Ok(Some(_)) = self.child.try_wait() {
            return Ok(());
        }
        // SAFETY: kill on our own child's pid.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                if is_mounted(&self.mnt) {
                    return Err(format!("{} still mounted after exit", self.mnt.display()));
                }
                return if status.success() {
                    Ok(())
                } else {
                    Err(format!("fsredirect mount exited with {status}"))
                };
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                let _ = Command::new("umount").arg("-l").arg(&self.mnt).status();
                return Err("fsredirect mount ignored SIGTERM for 20 s".into());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for HostMount {
    fn drop(&mut self) {
        let _ = self.stop_inner();
    }
}

/// Finds a tool in PATH.
pub fn which(tool: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join(tool))
            .find(|p| p.is_file())
    })
}
