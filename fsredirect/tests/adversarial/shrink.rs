//! Delta debugging over the steps of a failing trace: drop whole kinds of steps (checks,
//! restarts, races, then each opcode), then chunks of ever finer size, then shorten races,
//! keeping every change after which a replay still fails with the same kind of finding.

use super::ops::Step;
use super::run::{replay, Setup};

/// A shrunk trace and what it took.
pub struct Shrunk {
    /// The steps.
    pub steps: Vec<Step>,
    /// Replays run.
    pub replays: usize,
}

/// Shrinks `steps` (which fail with `class` under `setup`) with at most `budget` replays.
pub fn shrink(setup: &Setup, class: &str, steps: Vec<Step>, budget: usize) -> Shrunk {
    let replays = std::cell::Cell::new(0usize);
    // A race may need several tries to lose again.
    let fails = |cand: &[Step]| -> bool {
        let tries = if cand.iter().any(|s| matches!(s, Step::Race { .. })) {
            3
        } else {
            1
        };
        for _ in 0..tries {
            if replays.get() >= budget {
                return false;
            }
            replays.set(replays.get() + 1);
            if replay(setup, cand, false)
                .0
                .is_some_and(|m| m.class == class)
            {
                return true;
            }
        }
        false
    };
    let mut steps = steps;
    // Whole kinds of steps first: checks, restarts, races.
    let kinds: [fn(&Step) -> bool; 3] = [
        |s| matches!(s, Step::Check),
        |s| matches!(s, Step::Restart),
        |s| matches!(s, Step::Race { .. }),
    ];
    for kind in kinds {
        if steps.iter().any(kind) {
            let cand: Vec<Step> = steps.iter().filter(|s| !kind(s)).cloned().collect();
            if fails(&cand) {
                steps = cand;
            }
        }
    }
    // Then every request of one opcode at a time: most steps of a long trace are requests
    // the finding does not need (lookups, reads, failed calls).
    let mut opcodes: Vec<&'static str> = Vec::new();
    for s in &steps {
        if let Step::Call(op) = s {
            if !opcodes.contains(&op.req.opcode()) {
                opcodes.push(op.req.opcode());
            }
        }
    }
    for opcode in opcodes {
        let cand: Vec<Step> = steps
            .iter()
            .filter(|s| !matches!(s, Step::Call(op) if op.req.opcode() == opcode))
            .cloned()
            .collect();
        if cand.len() < steps.len() && fails(&cand) {
            steps = cand;
        }
    }
    // ddmin by complements.
    let mut n = 2usize;
    while steps.len() >= 2 {
        let chunk = steps.len().div_ceil(n);
        let mut removed = false;
        let mut start = 0;
        while start < steps.len() {
            let end = (start + chunk).min(steps.len());
            let cand: Vec<Step> = steps[..start]
                .iter()
                .chain(&steps[end..])
                .cloned()
                .collect();
            if fails(&cand) {
                steps = cand;
                removed = true;
                n = (n - 1).max(2);
                break;
            }
            start = end;
        }
        if !removed {
            if n >= steps.len() {
                break;
            }
            n = (n * 2).min(steps.len());
        }
        if replays.get() >= budget {
            break;
        }
    }
    // Races: fewer repetitions, fewer requests.
    for i in 0..steps.len() {
        let Step::Race { repeat, skew, ops } = steps[i].clone() else {
            continue;
        };
        let mut best = (repeat, skew.clone(), ops.clone());
        let mut r = repeat;
        while r > 1 {
            r /= 2;
            let mut cand = steps.clone();
            cand[i] = Step::Race {
                repeat: r,
                skew: best.1.clone(),
                ops: best.2.clone(),
            };
            if fails(&cand) {
                best.0 = r;
                steps = cand;
            } else {
                break;
            }
        }
        for j in (0..best.2.len()).rev() {
            if best.2.len() <= 2 {
                break;
            }
            let mut ops = best.2.clone();
            let mut skew = best.1.clone();
            ops.remove(j);
            skew.remove(j);
            let mut cand = steps.clone();
            cand[i] = Step::Race {
                repeat: best.0,
                skew: skew.clone(),
                ops: ops.clone(),
            };
            if fails(&cand) {
                best = (best.0, skew, ops);
                steps = cand;
            }
        }
    }
    Shrunk {
        steps,
        replays: replays.get(),
    }
}
