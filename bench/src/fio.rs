//! The real kernel client: fio through `fsredirect mount` (redirecting and passthrough
//! shares served through /dev/fuse) and on the host directory itself.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::{BenchError, Result};

/// One fio job as the report names it.
#[derive(Debug, Clone, Copy)]
pub struct FioJob {
    /// Name for tables.
    pub name: &'static str,
    /// fio `--rw`.
    pub rw: &'static str,
    /// fio `--bs`.
    pub bs: &'static str,
    /// Whether the job reports IOPS (random) rather than bandwidth (sequential).
    pub iops: bool,
}

/// The jobs, in the order they run; the read jobs reuse the file the write job laid out.
pub const JOBS: [FioJob; 4] = [
    FioJob {
        name: "seq write 1M",
        rw: "write",
        bs: "1M",
        iops: false,
    },
    FioJob {
        name: "seq read 1M",
        rw: "read",
        bs: "1M",
        iops: false,
    },
    FioJob {
        name: "rand read 4k",
        rw: "randread",
        bs: "4k",
        iops: true,
    },
    FioJob {
        name: "rand write 4k",
        rw: "randwrite",
        bs: "4k",
        iops: true,
    },
];

/// Run length and file size of every job.
#[derive(Debug, Clone)]
pub struct FioParams {
    /// `--runtime` in seconds (time based).
    pub runtime_s: u32,
    /// `--size`, e.g. "64M".
    pub size: String,
}

impl FioParams {
    /// The fio command line for `job` in `dir`, as run and as printed in the report.
    pub fn args(&self, job: &FioJob, dir: &Path) -> Vec<String> {
        vec![
            format!("--name={}", job.rw),
            format!("--directory={}", dir.display()),
            "--filename=bench.dat".into(),
            format!("--rw={}", job.rw),
            format!("--bs={}", job.bs),
            format!("--size={}", self.size),
            format!("--runtime={}", self.runtime_s),
            "--time_based".into(),
            "--ioengine=psync".into(),
            // fio drops the file's cached pages before a job by default; on a FUSE mount
            // that reaches only the client's cache, not the backing file's, so the host
            // directory would read from disk and the mounts from memory.
            "--invalidate=0".into(),
            "--output-format=json".into(),
        ]
    }
}

/// Bandwidth (bytes/s) or IOPS of `job`, from fio's JSON output.
pub fn parse_result(json: &str, job: &FioJob) -> Result<f64> {
    let dir = if job.rw.contains("read") {
        "read"
    } else {
        "write"
    };
    let key = if job.iops { "\"iops\"" } else { "\"bw_bytes\"" };
    let section = json
        .find(&format!("\"{dir}\" : {{"))
        .ok_or_else(|| BenchError::Fio(format!("no \"{dir}\" section in fio's output")))?;
    let rest = &json[section..];
    let at = rest
        .find(key)
        .ok_or_else(|| BenchError::Fio(format!("no {key} in fio's {dir} section")))?;
    let value = rest[at + key.len()..]
        .trim_start_matches([' ', ':'])
        .split([',', '\n'])
        .next()
        .unwrap_or("")
        .trim();
    value
        .parse()
        .map_err(|_| BenchError::Fio(format!("fio's {key} is not a number: {value:?}")))
}

/// Runs one fio job in `dir`.
pub fn run_job(params: &FioParams, job: &FioJob, dir: &Path) -> Result<f64> {
    let out = Command::new("fio")
        .args(params.args(job, dir))
        .output()
        .map_err(|e| BenchError::Fio(format!("cannot run fio (Debian package fio): {e}")))?;
    if !out.status.success() {
        return Err(BenchError::Fio(format!(
            "fio {} in {} failed ({}): {}",
            job.rw,
            dir.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    parse_result(&String::from_utf8_lossy(&out.stdout), job)
}

/// True if `path` is a mount point now.
fn is_mounted(path: &Path) -> bool {
    let table = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let want = path.to_string_lossy();
    table
        .lines()
        .any(|l| l.split(' ').nth(4) == Some(want.as_ref()))
}

/// A running `fsredirect mount`, stopped with SIGTERM when dropped.
pub struct HostMount {
    child: Child,
    mnt: PathBuf,
}

impl HostMount {
    /// Starts `fsredirect mount --share spec mnt` and waits until the mount is up.
    pub fn start(bin: &Path, spec: &str, mnt: &Path) -> Result<Self> {
        let child = Command::new(bin)
            .args(["mount", "--share", spec])
            .arg(mnt)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .map_err(|e| BenchError::Mount(format!("cannot run {}: {e}", bin.display())))?;
        let mut mount = HostMount {
            child,
            mnt: mnt.to_path_buf(),
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while !is_mounted(mnt) {
            if let Ok(Some(status)) = mount.child.try_wait() {
                return Err(BenchError::Mount(format!(
                    "fsredirect mount {spec} exited early: {status}"
                )));
            }
            if Instant::now() > deadline {
                return Err(BenchError::Mount(format!(
                    "{} not mounted after 10 s",
                    mnt.display()
                )));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(mount)
    }
}

impl Drop for HostMount {
    fn drop(&mut self) {
        // SAFETY: kill() on our own child's pid; no memory is involved.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        eprintln!(
            "bench: fsredirect mount on {} did not stop; killing it",
            self.mnt.display()
        );
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = Command::new("umount").arg("-l").arg(&self.mnt).status();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = r#"{ "jobs" : [ { "read" : {
        "io_bytes" : 1,
        "bw_bytes" : 662423760,
        "iops" : 631.736527,
      },
      "write" : {
        "bw_bytes" : 5,
        "iops" : 7.5,
      } } ] }"#;

    #[test]
    fn parses_read_bandwidth_and_write_iops() {
        assert_eq!(parse_result(SAMPLE, &JOBS[1]).unwrap(), 662423760.0);
        assert_eq!(parse_result(SAMPLE, &JOBS[3]).unwrap(), 7.5);
    }

    #[test]
    fn missing_section_is_an_error() {
        assert!(parse_result("{}", &JOBS[0]).is_err());
    }
}
