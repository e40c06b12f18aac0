//! Writes the seed inputs of every target into `DIR/<target>/<name>`, for a fuzzer's first
//! corpus: `cargo run -p fuzz-targets --example write_seeds -- DIR`.

use std::path::PathBuf;

fn main() {
    let Some(dir) = std::env::args_os().nth(1).map(PathBuf::from) else {
        eprintln!("usage: write_seeds DIR");
        std::process::exit(2);
    };
    for (target, _) in fuzz_targets::TARGETS {
        let target_dir = dir.join(target);
        std::fs::create_dir_all(&target_dir).expect("cannot create the seed directory");
        for seed in fuzz_targets::seeds::for_target(target) {
            let path = target_dir.join(format!("seed-{}", seed.name));
            std::fs::write(&path, &seed.bytes).expect("cannot write a seed");
        }
    }
}
