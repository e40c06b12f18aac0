//! The vhost-user request stream as the host's own system calls: the limit each back-end's
//! figures are set against, measured in the same rounds.
//!
//! One thread makes, on a share populated as the back-ends' plain shares are
//! ([`populate`]), the calls a back-end makes to serve each request: `fstatat` in the share's
//! directory for a LOOKUP, `statx` of an open file for a GETATTR, `pread`/`pwrite` of 4 KiB at
//! the same random offsets for the random READs and WRITEs, `pread` of 1 MiB in order for the
//! sequential READs, `pwrite` of 1 MiB in order and one `fsync` (timed together) for the
//! sequential WRITEs, `openat` with `O_CREAT | O_EXCL` for a CREATE (the close follows,
//! untimed, as the RELEASE does) and `unlinkat` for an UNLINK. The calls go one at a time, so
//! one figure stands for both depths.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::Instant;

use crate::stats::Latencies;
use crate::vhost_bench::{
    file_name, populate, OpFigures, VuOp, VuParams, DATA_FILE, SEQ_CHUNK, SEQ_REQUESTS, VU_OPS,
};
use crate::workload::{cname, create_at, settle, stat_at, unlink_at, Rng};
use crate::{io_err, Result};

/// One host run: a figure per operation, in [`VuOp::ALL`] order (no notifications).
pub type HostFigures = [OpFigures; VU_OPS];

/// Bytes of one random READ or WRITE.
const RAND_IO: usize = 4096;

/// Populates `base/share` as a back-end's plain share and writes it back to disk (as
/// [`crate::vhost_bench::run_target`] does for each back-end), makes every call of the
/// workload on it, and removes `base`.
pub fn run_host(params: &VuParams, base: &Path) -> Result<HostFigures> {
    let share = base.join("share");
    populate(&share, None, params.files, params.data_mib)?;
    settle(&share)?;
    let figures = host_workload(&share, params)?;
    std::fs::remove_dir_all(base).map_err(io_err(format!("remove {}", base.display())))?;
    Ok(figures)
}

/// Times `count` calls of `call`, one after another.
fn timed(count: usize, mut call: impl FnMut(usize) -> Result<()>) -> Result<OpFigures> {
    let mut lat = Latencies::with_capacity(count);
    let start = Instant::now();
    for i in 0..count {
        let t = Instant::now();
        call(i)?;
        lat.push(t.elapsed());
    }
    Ok(OpFigures {
        ops_per_sec: count as f64 / start.elapsed().as_secs_f64().max(1e-9),
        p50_us: lat.quantile_us(0.5),
        ..Default::default()
    })
}

/// Every operation of the workload, as host calls in `share`.
fn host_workload(share: &Path, params: &VuParams) -> Result<HostFigures> {
    let files = params.files.max(1);
    let ops = params.ops.max(1);
    let blocks = (params.data_mib << 20) / RAND_IO as u64;
    let chunks = (params.data_mib.max(1) << 20) / u64::from(SEQ_CHUNK);
    let dir = File::open(share).map_err(io_err(format!("open {}", share.display())))?;
    let names: Vec<_> = (0..files).map(|i| cname(&file_name(i))).collect();
    let mut figures = HostFigures::default();
    let at = |op: VuOp| op.index();

    figures[at(VuOp::Lookup)] = timed(ops, |i| stat_at(&dir, &names[i % files]))?;

    let open: Vec<File> = (0..files)
        .map(|i| {
            let path = share.join(file_name(i));
            File::open(&path).map_err(io_err(format!("open {}", path.display())))
        })
        .collect::<Result<_>>()?;
    figures[at(VuOp::Getattr)] = timed(ops, |i| {
        open[i % files]
            .metadata()
            .map(drop)
            .map_err(io_err("statx".into()))
    })?;
    drop(open);

    let path = share.join(DATA_FILE);
    let data = File::options()
        .read(true)
        .write(true)
        .open(&path)
        .map_err(io_err(format!("open {}", path.display())))?;
    let mut buf = vec![0xa5u8; SEQ_CHUNK as usize];
    let mut rng = Rng::new();
    figures[at(VuOp::Read4k)] = timed(ops, |_| {
        let offset = rng.below(blocks) * RAND_IO as u64;
        data.read_exact_at(&mut buf[..RAND_IO], offset)
            .map_err(io_err("pread 4 KiB".into()))
    })?;
    figures[at(VuOp::Write4k)] = timed(ops, |_| {
        let offset = rng.below(blocks) * RAND_IO as u64;
        data.write_all_at(&buf[..RAND_IO], offset)
            .map_err(io_err("pwrite 4 KiB".into()))
    })?;
    figures[at(VuOp::SeqRead)] = timed(SEQ_REQUESTS, |i| {
        let offset = (i as u64 % chunks) * u64::from(SEQ_CHUNK);
        data.read_exact_at(&mut buf, offset)
            .map_err(io_err("pread 1 MiB".into()))
    })?;
    drop(data);

    figures[at(VuOp::SeqWrite)] = seq_write(share, &buf)?;

    let created: Vec<_> = (0..files).map(|i| cname(&format!("c-{i:06}"))).collect();
    let mut fds = Vec::with_capacity(files);
    figures[at(VuOp::Create)] = timed(files, |i| {
        fds.push(create_at(&dir, &created[i])?);
        Ok(())
    })?;
    drop(fds);
    figures[at(VuOp::Unlink)] = timed(files, |i| unlink_at(&dir, &created[i]))?;
    Ok(figures)
}

/// [`SEQ_REQUESTS`] writes of `chunk` in order to a new file and one `fsync`, timed together
/// (each write's latency is a sample); the file is removed after.
fn seq_write(share: &Path, chunk: &[u8]) -> Result<OpFigures> {
    let path = share.join("seq-host");
    let file = File::create_new(&path).map_err(io_err(format!("create {}", path.display())))?;
    let start = Instant::now();
    let mut figures = timed(SEQ_REQUESTS, |i| {
        file.write_all_at(chunk, i as u64 * chunk.len() as u64)
            .map_err(io_err("pwrite 1 MiB".into()))
    })?;
    file.sync_all().map_err(io_err("fsync".into()))?;
    figures.ops_per_sec = SEQ_REQUESTS as f64 / start.elapsed().as_secs_f64().max(1e-9);
    drop(file);
    std::fs::remove_file(&path).map_err(io_err(format!("remove {}", path.display())))?;
    Ok(figures)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params() -> VuParams {
        VuParams {
            hypervisor: "unused".into(),
            virtiofsd: Err("unused".into()),
            fsredirect: "unused".into(),
            unprivileged_skipped: None,
            rounds: 1,
            sandbox: "namespace".into(),
            files: 5,
            ops: 40,
            data_mib: 2,
        }
    }

    #[test]
    fn every_operation_is_measured_and_the_run_leaves_nothing_behind() {
        let tmp = tempfile::tempdir().unwrap();
        let base = tmp.path().join("host");

        let figures = run_host(&params(), &base).unwrap();

        for op in VuOp::ALL {
            let f = &figures[op.index()];
            assert!(f.ops_per_sec > 0.0, "{}: {f:?}", op.name());
            assert!(f.p50_us > 0.0, "{}: {f:?}", op.name());
        }
        assert!(!base.exists(), "the run's directory is removed");
    }

    #[test]
    fn a_missing_file_is_an_error_that_names_the_call() {
        let tmp = tempfile::tempdir().unwrap();
        let share = tmp.path().join("share");
        populate(&share, None, 2, 1).unwrap();
        std::fs::remove_file(share.join(file_name(1))).unwrap();

        let err = host_workload(&share, &params()).unwrap_err();

        assert!(err.to_string().contains("fstatat"), "{err}");
    }
}
