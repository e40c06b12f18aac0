//! Replays every committed fuzz input (`fuzz/corpus/<target>/` and
//! `fuzz/regressions/<target>/`) and every seed through the target functions: what the
//! fuzzers found stays fixed without an instrumented build.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Instant;

/// One target at a time: a run checks that no descriptor opened meanwhile stays open, and
/// another test reading its corpus files would open some.
static SERIAL: Mutex<()> = Mutex::new(());

fn inputs(target: &str) -> Vec<PathBuf> {
    let fuzz = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz");
    let mut files = Vec::new();
    for kind in ["corpus", "regressions"] {
        let dir = fuzz.join(kind).join(target);
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            if entry.file_type().is_ok_and(|t| t.is_file()) {
                files.push(entry.path());
            }
        }
    }
    files.sort();
    files
}

fn replay(target: &str) {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let (_, body) = fuzz_targets::TARGETS
        .iter()
        .find(|(name, _)| *name == target)
        .expect("a known target");
    let start = Instant::now();
    let files = inputs(target);
    for file in &files {
        let data = std::fs::read(file).unwrap();
        eprintln!("replaying {}", file.display());
        body(&data);
    }
    let seeds = fuzz_targets::seeds::for_target(target);
    for seed in &seeds {
        body(&seed.bytes);
    }
    println!(
        "{target}: {} committed inputs and {} seeds replayed in {:.1?}",
        files.len(),
        seeds.len(),
        start.elapsed()
    );
}

#[test]
fn fuse_request_inputs_replay() {
    replay("fuse_request");
}

#[test]
fn virtio_mmio_inputs_replay() {
    replay("virtio_mmio");
}

#[test]
fn vhost_user_inputs_replay() {
    replay("vhost_user");
}

#[test]
fn share_spec_inputs_replay() {
    replay("share_spec");
}
