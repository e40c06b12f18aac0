//! Runs steps against a server and judges every reply with the model; after a race, keeps
//! every model state some order of the raced requests explains; the check walks the share
//! through the file system and ends with `verify`.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use fsredirect::FsConfig;

use super::exec::{Server, READ_CHUNK};
use super::gen::{Gen, Profile};
use super::model::{HKind, Lenience, Mismatch, Model};
use super::ops::{tag, Call, Outcome, Reply, Req, Shown, Step, Tag, ROOT_NODE};

/// How the server under test is configured.
#[derive(Debug, Clone, Copy)]
pub struct Serving {
    /// Guest-tree inodes held as file handles (as a root server runs) or as `O_PATH`
    /// descriptors (as a server without CAP_DAC_READ_SEARCH runs).
    pub file_handles: bool,
    /// Extended attributes reached through the server's own descriptors.
    pub xattrs_by_descriptor: bool,
}

/// How a run is set up: the server's configuration and the seed's profile.
#[derive(Debug, Clone)]
pub struct Setup {
    /// The server's configuration.
    pub serving: Serving,
    /// The seed's profile.
    pub profile: Profile,
    /// Where the seed's share directories go.
    pub base: PathBuf,
}

impl Setup {
    fn config(&self) -> FsConfig {
        FsConfig {
            inode_file_handles: self.serving.file_handles,
            xattrs_by_descriptor: self.serving.xattrs_by_descriptor,
            max_store_fds: self.profile.max_store_fds,
            ..FsConfig::default()
        }
    }
}

/// What a run did.
#[derive(Debug, Default, Clone, Copy)]
pub struct Stats {
    /// Requests of the trace sent (each repetition of a race counts each of its requests).
    pub ops: u64,
    /// Every request sent, the checks' own included.
    pub calls: u64,
    /// Race repetitions.
    pub races: u64,
    /// Server restarts.
    pub restarts: u64,
    /// Full checks (walk and verify).
    pub checks: u64,
    /// Requests judged against more than one model state.
    pub ambiguous: u64,
}

impl std::ops::AddAssign for Stats {
    fn add_assign(&mut self, o: Stats) {
        self.ops += o.ops;
        self.calls += o.calls;
        self.races += o.races;
        self.restarts += o.restarts;
        self.checks += o.checks;
        self.ambiguous += o.ambiguous;
    }
}

/// A server, the model states that explain everything it answered so far, and a log.
pub struct Session {
    srv: Server,
    /// Model states consistent with every reply (more than one only after a race).
    pub cands: Vec<Model>,
    /// What ran.
    pub stats: Stats,
    log: Option<Vec<String>>,
    walk_n: u64,
    /// `verify` after every request, not only after races and checks (`FSR_ADV_VERIFY_EACH`).
    verify_each: bool,
}

/// At most this many model states are kept after a race.
const MAX_CANDS: usize = 8;

impl Session {
    /// A fresh share served as `setup` says; `log` keeps a line per step.
    pub fn new(setup: &Setup, log: bool) -> Result<Self, Mismatch> {
        let srv = Server::new(&setup.base, setup.config(), setup.profile.policy).map_err(|e| {
            Mismatch {
                class: "setup".into(),
                msg: format!("cannot start the server: {e}"),
            }
        })?;
        Ok(Session {
            srv,
            cands: vec![Model::new(setup.profile.policy.is_none())],
            stats: Stats::default(),
            log: log.then(Vec::new),
            walk_n: 0,
            verify_each: std::env::var_os("FSR_ADV_VERIFY_EACH").is_some(),
        })
    }

    /// The log lines so far.
    pub fn take_log(&mut self) -> Vec<String> {
        self.log.take().unwrap_or_default()
    }

    fn note(&mut self, line: impl FnOnce() -> String) {
        if let Some(log) = &mut self.log {
            log.push(line());
        }
    }

    /// Sends `call` and keeps the model states that accept its outcome.
    fn one(&mut self, t: Tag, call: &Call, len: &Lenience) -> (Outcome, Result<(), Mismatch>) {
        let out = self.srv.call(call);
        self.stats.calls += 1;
        if self.cands.len() == 1 {
            let r = self.cands[0].apply(t, call, &out, len);
            let forks = self.cands[0].take_forks();
            self.cands.extend(forks);
            self.cands.truncate(MAX_CANDS);
            return (out, r);
        }
        self.stats.ambiguous += 1;
        let mut first = None;
        let mut next: Vec<Model> = Vec::new();
        for cand in &self.cands {
            let mut m = cand.clone();
            match m.apply(t, call, &out, len) {
                Ok(()) => {
                    let forks = m.take_forks();
                    for x in std::iter::once(m).chain(forks) {
                        keep(&mut next, x);
                    }
                }
                Err(e) => {
                    first.get_or_insert(e);
                }
            }
        }
        if next.is_empty() {
            return (out, Err(first.unwrap()));
        }
        self.cands = next;
        (out, Ok(()))
    }

    /// [`Self::one`] for the check's own requests: a rejected one is logged.
    fn judged(&mut self, t: Tag, call: &Call) -> Result<Outcome, Mismatch> {
        let (out, r) = self.one(t, call, &Lenience::default());
        if let Err(e) = r {
            self.note(|| {
                let mut c = format!("{call:?}");
                c.truncate(300);
                format!("  in the check: {c} -> {}", Shown(&out))
            });
            return Err(e);
        }
        Ok(out)
    }

    /// Runs one step.
    pub fn step(&mut self, step: &Step) -> Result<(), Mismatch> {
        match step {
            Step::Call(op) => {
                let call = self.cands[0].resolve(&op.req);
                self.stats.ops += 1;
                let (out, r) = self.one(tag(op.id, 0), &call, &Lenience::default());
                self.note(|| format!("{op} -> {}", Shown(&out)));
                r?;
                if self.verify_each {
                    self.verify()?;
                }
                Ok(())
            }
            Step::Race { repeat, skew, ops } => {
                for rep in 0..*repeat {
                    self.race_once(rep, skew, ops)?;
                }
                Ok(())
            }
            Step::Restart => {
                self.stats.restarts += 1;
                self.note(|| "restart".into());
                self.srv.restart().map_err(|e| Mismatch {
                    class: "restart".into(),
                    msg: format!("the server does not start again: {e}"),
                })?;
                for m in &mut self.cands {
                    m.restart();
                }
                Ok(())
            }
            Step::Check => {
                let r = self.check();
                self.note(|| match &r {
                    Ok(()) => "check: the share matches the model, verify clean".into(),
                    Err(_) => "check: FAILED".into(),
                });
                r
            }
        }
    }

    fn race_once(
        &mut self,
        rep: u16,
        skew: &[u16],
        ops: &[super::ops::Op],
    ) -> Result<(), Mismatch> {
        self.stats.races += 1;
        let base = &self.cands[0];
        let calls: Vec<(Tag, Call)> = ops
            .iter()
            .map(|op| (tag(op.id, rep), base.resolve(&op.req)))
            .collect();
        let mut len = Lenience {
            race: true,
            data: BTreeSet::new(),
        };
        for (_, c) in &calls {
            len.data.extend(base.data_targets(c));
        }
        // Vary the overlap from one repetition to the next.
        let spins: Vec<u32> = skew
            .iter()
            .map(|&s| u32::from(s) * (u32::from(rep) % 4) / 2)
            .collect();
        let plain: Vec<Call> = calls.iter().map(|(_, c)| c.clone()).collect();
        let outs = self.srv.race(&plain, &spins);
        self.stats.ops += calls.len() as u64;
        self.stats.calls += calls.len() as u64;
        if let Some(log) = &mut self.log {
            let parts: Vec<String> = ops
                .iter()
                .zip(&outs)
                .map(|(op, o)| format!("[{op} -> {}]", Shown(o)))
                .collect();
            log.push(format!("race {}: {}", rep + 1, parts.join(" || ")));
        }
        let mut next: Vec<Model> = Vec::new();
        let mut first = None;
        for cand in &self.cands {
            for order in orders(calls.len()) {
                let mut states = vec![cand.clone()];
                for &i in &order {
                    let mut after = Vec::new();
                    for mut m in states {
                        match m.apply(calls[i].0, &calls[i].1, &outs[i], &len) {
                            Ok(()) => {
                                let forks = m.take_forks();
                                after.push(m);
                                after.extend(forks);
                            }
                            Err(e) => {
                                first.get_or_insert(e);
                            }
                        }
                    }
                    states = after;
                }
                for m in states {
                    keep(&mut next, m);
                }
            }
        }
        if next.is_empty() {
            let e = first.unwrap();
            let replies: Vec<String> = ops
                .iter()
                .zip(&outs)
                .map(|(op, o)| format!("[{op} -> {}]", Shown(o)))
                .collect();
            return Err(Mismatch {
                class: format!("race: {}", e.class),
                msg: format!(
                    "no order of the raced requests explains their replies {}; in the order sent: {}",
                    replies.join(" || "),
                    e.msg
                ),
            });
        }
        self.cands = next;
        self.verify()?;
        if self.cands.len() > 1 {
            self.probe(&len.data)?;
        }
        if self.cands.len() > 1 {
            self.check()?;
        }
        Ok(())
    }

    /// Tells apart the model states a race left by looking at the objects it changed: their
    /// attributes, then their bytes through an open handle.
    fn probe(&mut self, objs: &BTreeSet<Tag>) -> Result<(), Mismatch> {
        for &o in objs {
            let m = &self.cands[0];
            let Some(&(node, _)) = m.k.known.get(&o) else {
                continue;
            };
            let handle =
                m.k.handles
                    .iter()
                    .find(|(_, h)| h.obj == o && h.kind == HKind::File)
                    .map(|(raw, _)| *raw);
            let t = self.walk_tag();
            let _ = self.judged(t, &Req::Getattr { node, handle: None })?;
            if let (Some(raw), true) = (handle, self.cands.len() > 1) {
                self.read_all(node, raw)?;
            }
        }
        Ok(())
    }

    /// True if the file behind `node` may have changed since the last check (or the model
    /// is unsure of it).
    fn changed(&self, node: u64) -> bool {
        self.cands.len() > 1
            || self.cands[0]
                .tgt(node)
                .is_none_or(|o| self.cands[0].dirty.contains(&o))
    }

    fn walk_tag(&mut self) -> Tag {
        self.walk_n += 1;
        tag(u32::MAX, self.walk_n as u16)
    }

    /// Walks the share through the file system (every name, attribute, byte, link target and
    /// xattr; every open file through its handle), then runs `verify`.
    pub fn check(&mut self) -> Result<(), Mismatch> {
        self.stats.checks += 1;
        let mut looked = Vec::new();
        self.walk(ROOT_NODE, 0, &mut looked)?;
        for node in looked.into_iter().rev() {
            let t = self.walk_tag();
            let _ = self.judged(t, &Req::Forget { node, count: 1 })?;
        }
        let handles: Vec<(u64, Tag)> = self.cands[0]
            .k
            .handles
            .iter()
            .filter(|(_, h)| h.kind == HKind::File)
            .map(|(raw, h)| (*raw, h.obj))
            .collect();
        for (raw, obj) in handles {
            let m = &self.cands[0];
            let changed = self.cands.len() > 1 || self.cands.iter().any(|m| m.dirty.contains(&obj));
            if !changed && m.objs[&obj].data.len() > 16 * 1024 {
                continue;
            }
            let node = m.k.known.get(&obj).map(|k| k.0).unwrap_or(0);
            self.read_all(node, raw)?;
        }
        for m in &mut self.cands {
            m.dirty.clear();
        }
        self.verify()
    }

    fn read_all(&mut self, node: u64, handle: u64) -> Result<(), Mismatch> {
        let mut offset = 0u64;
        for _ in 0..64 {
            let t = self.walk_tag();
            let call = Req::Read {
                node,
                handle,
                offset,
                size: READ_CHUNK,
            };
            match self.judged(t, &call)? {
                Ok(Reply::Data(d)) if d.len() == READ_CHUNK as usize => offset += d.len() as u64,
                _ => break,
            }
        }
        Ok(())
    }

    fn walk(&mut self, node: u64, depth: u32, looked: &mut Vec<u64>) -> Result<(), Mismatch> {
        let t = self.walk_tag();
        let Ok(Reply::Opened(Some(h))) = self.judged(t, &Req::Opendir { node })? else {
            return Ok(());
        };
        let t = self.walk_tag();
        let listing = self.judged(t, &Req::Readdir { node, handle: h })?;
        let t = self.walk_tag();
        let _ = self.judged(t, &Req::Releasedir { node, handle: h })?;
        let Ok(Reply::Dir(mut names)) = listing else {
            return Ok(());
        };
        names.sort();
        for (name, _) in names {
            let t = self.walk_tag();
            let Ok(Reply::Entry(child, attr)) =
                self.judged(t, &Req::Lookup { parent: node, name })?
            else {
                continue;
            };
            looked.push(child);
            let t = self.walk_tag();
            let _ = self.judged(
                t,
                &Req::Getattr {
                    node: child,
                    handle: None,
                },
            )?;
            match attr.mode & libc::S_IFMT {
                libc::S_IFDIR if depth < 8 => self.walk(child, depth + 1, looked)?,
                // Files read back whole: those changed since the last check, and small ones.
                libc::S_IFREG if attr.size <= 16 * 1024 || self.changed(child) => {
                    let t = self.walk_tag();
                    let open = Req::Open {
                        node: child,
                        flags: libc::O_RDONLY as u32,
                    };
                    if let Ok(Reply::Opened(Some(fh))) = self.judged(t, &open)? {
                        self.read_all(child, fh)?;
                        let t = self.walk_tag();
                        let _ = self.judged(
                            t,
                            &Req::Release {
                                node: child,
                                handle: fh,
                            },
                        )?;
                    }
                }
                libc::S_IFLNK => {
                    let t = self.walk_tag();
                    let _ = self.judged(t, &Req::Readlink { node: child })?;
                }
                _ => {}
            }
            let t = self.walk_tag();
            let list = self.judged(
                t,
                &Req::Listxattr {
                    node: child,
                    size: 4096,
                },
            )?;
            if let Ok(Reply::Names(list)) = list {
                for name in list.split(|&b| b == 0).filter(|n| !n.is_empty()) {
                    let t = self.walk_tag();
                    let get = Req::Getxattr {
                        node: child,
                        name: name.to_vec(),
                        size: 4096,
                    };
                    let _ = self.judged(t, &get)?;
                }
            }
        }
        Ok(())
    }

    /// `verify` on the share: every stub agrees with its stored object.
    pub fn verify(&self) -> Result<(), Mismatch> {
        match fsredirect::verify::verify_share(&self.srv.share) {
            Ok(v) if v.is_empty() => Ok(()),
            Ok(v) => Err(Mismatch {
                class: format!("verify: {}", v[0].kind()),
                msg: format!(
                    "verify: {}",
                    v.iter()
                        .map(|m| m.to_string())
                        .collect::<Vec<_>>()
                        .join("; ")
                ),
            }),
            Err(e) => Err(Mismatch {
                class: "verify: error".into(),
                msg: format!("verify failed: {e}"),
            }),
        }
    }

    /// The end of a run: a last check, a clean stop, and `verify` on the stopped share.
    pub fn finish(&mut self) -> Result<(), Mismatch> {
        self.check()?;
        self.srv.stop();
        self.verify()
    }
}

/// Adds model state `m` to `states` once what no guest can observe is forgotten
/// ([`Model::bury_all`]), unless an equal state is there or `states` holds [`MAX_CANDS`]
/// already: the states kept are the first distinct ones, as before, and no time goes into
/// comparing states that would be dropped (after a race, up to every order of its requests
/// times every fork of each reply).
fn keep(states: &mut Vec<Model>, mut m: Model) {
    if states.len() >= MAX_CANDS {
        return;
    }
    m.bury_all();
    if !states.contains(&m) {
        states.push(m);
    }
}

/// Every order of `n` items.
fn orders(n: usize) -> Vec<Vec<usize>> {
    if n == 0 {
        return vec![Vec::new()];
    }
    let mut all = Vec::new();
    for rest in orders(n - 1) {
        for pos in 0..=rest.len() {
            let mut o = rest.clone();
            o.insert(pos, n - 1);
            all.push(o);
        }
    }
    all
}

/// A finding: where, and what.
#[derive(Debug, Clone)]
pub struct Finding {
    /// Index of the step that failed (the number of steps for the final check).
    pub step: usize,
    /// What was wrong.
    pub mismatch: Mismatch,
}

/// The outcome of one seed.
pub struct SeedRun {
    /// The steps generated (up to the failing one).
    pub steps: Vec<Step>,
    /// What ran.
    pub stats: Stats,
    /// The finding, if any.
    pub finding: Option<Finding>,
    /// The log of the run, when asked for (`log_tail` of [`run_seed`]): its last lines.
    pub log_tail: Vec<String>,
}

/// Generates and runs `ops` requests of `seed`, on shares under `base`; a finding keeps the
/// last `log_tail` lines of the run's log (each step with its replies), for a race that a
/// replay may not lose again.
pub fn run_seed(
    base: &Path,
    serving: Serving,
    seed: u64,
    ops: u64,
    log_tail: usize,
) -> (Setup, SeedRun) {
    let mut gen = Gen::new(seed);
    let setup = Setup {
        serving,
        profile: gen.profile.clone(),
        base: base.to_path_buf(),
    };
    let mut steps = Vec::new();
    let mut session = match Session::new(&setup, log_tail > 0) {
        Ok(s) => s,
        Err(mismatch) => {
            let finding = Some(Finding { step: 0, mismatch });
            let run = SeedRun {
                steps,
                stats: Stats::default(),
                finding,
                log_tail: Vec::new(),
            };
            return (setup, run);
        }
    };
    while session.stats.ops < ops {
        let step = gen.next(&session.cands[0]);
        steps.push(step.clone());
        if let Some(log) = &mut session.log {
            // Only the tail is ever shown: keep the log from growing with the run.
            if log.len() > 2 * log_tail {
                log.drain(..log.len() - log_tail);
            }
        }
        if let Err(mismatch) = session.step(&step) {
            let finding = Some(Finding {
                step: steps.len() - 1,
                mismatch,
            });
            let log_tail = tail(session.take_log(), log_tail);
            return (
                setup,
                SeedRun {
                    steps,
                    stats: session.stats,
                    finding,
                    log_tail,
                },
            );
        }
    }
    let finding = session.finish().err().map(|mismatch| Finding {
        step: steps.len(),
        mismatch,
    });
    let log_tail = match finding {
        Some(_) => tail(session.take_log(), log_tail),
        None => Vec::new(),
    };
    let stats = session.stats;
    (
        setup,
        SeedRun {
            steps,
            stats,
            finding,
            log_tail,
        },
    )
}

/// The last `n` lines of `log`.
fn tail(mut log: Vec<String>, n: usize) -> Vec<String> {
    log.drain(..log.len().saturating_sub(n));
    log
}

/// Runs `steps` on a fresh share (then the final check); the finding, if any, and the log.
pub fn replay(setup: &Setup, steps: &[Step], log: bool) -> (Option<Mismatch>, Vec<String>) {
    let mut session = match Session::new(setup, log) {
        Ok(s) => s,
        Err(e) => return (Some(e), Vec::new()),
    };
    for s in steps {
        if let Err(e) = session.step(s) {
            return (Some(e), session.take_log());
        }
    }
    let r = session.finish();
    if log {
        session.note(|| match &r {
            Ok(()) => "final check and verify: clean".into(),
            Err(_) => "final check and verify: FAILED".into(),
        });
    }
    (r.err(), session.take_log())
}
