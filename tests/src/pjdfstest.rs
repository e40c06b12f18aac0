//! The pjdfstest binary (crates.io `pjdfstest` 0.2.2) shared by the host-mount test
//! (tests/fs_mount.rs) and the in-guest test (tests/pjdfstest_guest.rs).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// `<target>/<profile>` of the running test binary (`<target>/<profile>/deps/<test>-<hash>`).
pub fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("the test binary has a path");
    exe.parent()
        .and_then(Path::parent)
        .expect("the test binary is inside a cargo target directory")
        .to_path_buf()
}

/// The pjdfstest binary: `$PJDFSTEST`, or built once into `<profile>/pjdfstest-0.2.2` (both
/// tests reuse that build; concurrent callers in one process wait for the first).
///
/// Built dynamically on purpose: a static glibc binary still loads NSS modules for getpwnam
/// (pjdfstest looks up its dummy users), and libnss_systemd crashes it.
pub fn binary() -> Result<PathBuf, String> {
    static BIN: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    BIN.get_or_init(build).clone()
}

fn build() -> Result<PathBuf, String> {
    if let Some(p) = std::env::var_os("PJDFSTEST") {
        return Ok(PathBuf::from(p));
    }
    let root = profile_dir().join("pjdfstest-0.2.2");
    let bin = root.join("bin/pjdfstest");
    if bin.is_file() {
        return Ok(bin);
    }
    if !Path::new("/usr/lib/x86_64-linux-gnu/libacl.a").exists()
        && !Path::new("/usr/include/sys/acl.h").exists()
    {
        return Err("building pjdfstest needs libacl1-dev (apt-get install libacl1-dev)".into());
    }
    println!("building pjdfstest 0.2.2 into {}", root.display());
    let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args([
            "install",
            "--locked",
            "pjdfstest@0.2.2",
            "--target",
            "x86_64-unknown-linux-gnu",
        ])
        .arg("--root")
        .arg(&root)
        .env("CARGO_TARGET_DIR", root.join("build"))
        .status()
        .map_err(|e| format!("cannot run cargo install: {e}"))?;
    if !status.success() || !bin.is_file() {
        return Err(format!("building pjdfstest failed ({status})"));
    }
    Ok(bin)
}
