//! A randomized model-based exerciser: random file-system operations on a real directory
//! (mkdir, write, truncate, read, rename, unlink, rmdir, link, symlink, mkfifo, and writes,
//! reads and fsyncs through descriptors held across steps, also after unlink), each checked
//! against an in-memory model (outcome and errno), with a full comparison of the tree every
//! few steps. Seeded; the seed is printed, and `FSR_MODEL_SEED=<seed>` replays.
//!
//! On a share with a placement policy ([`Placement`]), each full comparison also checks on
//! the host that every file the server must have settled is where the policy says: a stub
//! with redirect metadata, or an inline guest-tree file. A file is settled by a write that
//! reaches `min-size`, a truncate, or a rename of the file itself while it has one name; a
//! second hard link or a rename of a directory above it unsettles it.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// xorshift64*: tiny, deterministic, good enough to pick operations.
pub struct Rng(u64);

impl Rng {
    /// A generator from a seed (0 is mapped to a fixed non-zero state).
    pub fn new(seed: u64) -> Self {
        Rng(seed.max(1) ^ 0x9e37_79b9_7f4a_7c15)
    }

    /// The next 64 random bits.
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A number in `0..n`.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Node {
    Dir,
    /// A regular file: index of its content (hard links share one).
    File(usize),
    /// A symlink (to a fixed dangling target) or a FIFO; the number tells hard links apart.
    Special(SpecialKind, usize),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SpecialKind {
    Symlink,
    Fifo,
}

/// Where the model's symlinks point: nowhere, and never followed by the exerciser.
const SYMLINK_TARGET: &str = "fsr-model-dangling-target";

impl Node {
    /// The identity shared by hard links, for anything but a directory.
    fn id(&self) -> Option<usize> {
        match self {
            Node::Dir => None,
            Node::File(id) | Node::Special(_, id) => Some(*id),
        }
    }
}

/// The model: paths relative to the root, and file contents.
#[derive(Default)]
struct Model {
    nodes: BTreeMap<PathBuf, Node>,
    contents: Vec<Vec<u8>>,
    /// Per content: the server has certainly put the file where the policy wants it.
    settled: Vec<bool>,
}

/// The host side of a share with a placement policy, for checking where files are.
pub struct Placement {
    /// The share's guest tree on the host.
    pub guest: PathBuf,
    /// The share's policy.
    pub policy: fsredirect::Policy,
}

/// An open descriptor held across steps, with the content it refers to.
struct Held {
    file: File,
    content: usize,
}

const NAMES: [&str; 4] = ["a", "b", "c", "d"];

impl Model {
    fn parent_ok(&self, path: &Path) -> Result<(), i32> {
        match path.parent() {
            Some(p) if p.as_os_str().is_empty() => Ok(()),
            Some(p) => match self.nodes.get(p) {
                Some(Node::Dir) => Ok(()),
                // The kernel follows a symlink in the middle of a path: its target is missing.
                Some(Node::Special(SpecialKind::Symlink, _)) => Err(libc::ENOENT),
                Some(_) => Err(libc::ENOTDIR),
                None => self.parent_ok(p).and(Err(libc::ENOENT)),
            },
            None => Ok(()),
        }
    }

    /// How many names content `id` has.
    fn names(&self, id: usize) -> usize {
        self.nodes.values().filter(|n| n.id() == Some(id)).count()
    }

    /// Records an event that makes the server settle the placement of content `id`, if it
    /// has only one name (a file with several never moves).
    fn settle(&mut self, id: usize) {
        let single = self.names(id) == 1;
        if let Some(s) = self.settled.get_mut(id) {
            *s = single;
        }
    }

    fn unsettle(&mut self, id: usize) {
        if let Some(s) = self.settled.get_mut(id) {
            *s = false;
        }
    }

    fn is_empty_dir(&self, dir: &Path) -> bool {
        !self
            .nodes
            .keys()
            .any(|p| p.parent() == Some(dir) && p.as_path() != dir)
    }
}

fn errno(r: io::Result<()>) -> Result<(), i32> {
    r.map_err(|e| e.raw_os_error().unwrap_or(-1))
}

fn check(
    step: usize,
    what: &str,
    got: Result<(), i32>,
    want: Result<(), &[i32]>,
) -> Result<(), String> {
    let ok = match (&got, &want) {
        (Ok(()), Ok(())) => true,
        (Err(g), Err(allowed)) => allowed.contains(g),
        _ => false,
    };
    if ok {
        Ok(())
    } else {
        Err(format!(
            "step {step}: {what}: got {got:?}, model expects {want:?}"
        ))
    }
}

/// Runs `steps` random operations under `root` (an empty directory) from `seed`.
pub fn run(root: &Path, seed: u64, steps: usize) -> Result<(), String> {
    run_with(root, seed, steps, None)
}

/// [`run`], also checking file placement against `placement`'s policy.
pub fn run_with(
    root: &Path,
    seed: u64,
    steps: usize,
    placement: Option<&Placement>,
) -> Result<(), String> {
    let mut rng = Rng::new(seed);
    let mut m = Model::default();
    let min_size = placement.map_or(0, |p| p.policy.min_size());
    // Placements checked: [inline, redirected].
    let mut checked = [0usize; 2];
    let mut held: Vec<Held> = Vec::new();
    for step in 0..steps {
        let path = random_path(&mut rng, &m);
        let other = random_path(&mut rng, &m);
        let full = root.join(&path);
        // Writes, truncates and opens never go through a symlink or into a FIFO.
        let special = matches!(m.nodes.get(&path), Some(Node::Special(..)));
        match rng.below(13) {
            0 => {
                let want = m.parent_ok(&path).and_then(|_| {
                    if m.nodes.contains_key(&path) {
                        Err(libc::EEXIST)
                    } else {
                        Ok(())
                    }
                });
                let got = errno(fs::create_dir(&full));
                check(step, &format!("mkdir {path:?}"), got, errs(want))?;
                if got.is_ok() {
                    m.nodes.insert(path, Node::Dir);
                }
            }
            1 | 2 if !special => {
                let offset = rng.below(70_000);
                let len = 1 + rng.below(20_000) as usize;
                let byte = rng.below(256) as u8;
                let want = m.parent_ok(&path).and_then(|_| match m.nodes.get(&path) {
                    Some(Node::Dir) => Err(libc::EISDIR),
                    _ => Ok(()),
                });
                let got = errno(
                    OpenOptions::new()
                        .create(true)
                        .truncate(false)
                        .write(true)
                        .open(&full)
                        .and_then(|f| f.write_all_at(&vec![byte; len], offset)),
                );
                check(
                    step,
                    &format!("write {path:?}@{offset}+{len}"),
                    got,
                    errs(want),
                )?;
                if got.is_ok() {
                    let id = match m.nodes.get(&path) {
                        Some(Node::File(id)) => *id,
                        _ => {
                            m.contents.push(Vec::new());
                            // A new file is placed by the policy at create.
                            m.settled.push(true);
                            let id = m.contents.len() - 1;
                            m.nodes.insert(path.clone(), Node::File(id));
                            id
                        }
                    };
                    write_model(&mut m.contents[id], offset as usize, &vec![byte; len]);
                    if offset + len as u64 >= min_size {
                        m.settle(id);
                    }
                }
            }
            3 if !special => {
                let size = rng.below(90_000);
                let want = match m.nodes.get(&path) {
                    Some(Node::Dir) => Err(libc::EISDIR),
                    Some(_) => Ok(()),
                    None => m.parent_ok(&path).and(Err(libc::ENOENT)),
                };
                let got = errno(
                    OpenOptions::new()
                        .write(true)
                        .open(&full)
                        .and_then(|f| f.set_len(size)),
                );
                check(
                    step,
                    &format!("truncate {path:?} to {size}"),
                    got,
                    errs(want),
                )?;
                if let (Ok(()), Some(Node::File(id))) = (got, m.nodes.get(&path).copied()) {
                    m.contents[id].resize(size as usize, 0);
                    m.settle(id);
                }
            }
            4 => {
                if let Some(Node::File(id)) = m.nodes.get(&path) {
                    let mut data = Vec::new();
                    File::open(&full)
                        .and_then(|mut f| f.read_to_end(&mut data))
                        .map_err(|e| format!("step {step}: read {path:?}: {e}"))?;
                    if data != m.contents[*id] {
                        return Err(format!(
                            "step {step}: {path:?} holds {} bytes differing from the model's {}",
                            data.len(),
                            m.contents[*id].len()
                        ));
                    }
                }
            }
            5 => {
                let want = rename_outcome(&m, &path, &other);
                let got = errno(fs::rename(&full, root.join(&other)));
                check(step, &format!("rename {path:?} -> {other:?}"), got, want)?;
                if got.is_ok() {
                    apply_rename(&mut m, &path, &other);
                }
            }
            6 => {
                let want = match m.nodes.get(&path) {
                    Some(Node::File(_) | Node::Special(..)) => Ok(()),
                    Some(Node::Dir) => Err(&[libc::EISDIR, libc::EPERM][..]),
                    None => Err(&[libc::ENOENT, libc::ENOTDIR][..]),
                };
                let got = errno(fs::remove_file(&full));
                check(step, &format!("unlink {path:?}"), got, want)?;
                if got.is_ok() {
                    m.nodes.remove(&path);
                }
            }
            7 => {
                let want = match m.nodes.get(&path) {
                    Some(Node::Dir) if m.is_empty_dir(&path) => Ok(()),
                    Some(Node::Dir) => Err(&[libc::ENOTEMPTY, libc::EEXIST][..]),
                    Some(_) => Err(&[libc::ENOTDIR][..]),
                    None => Err(&[libc::ENOENT, libc::ENOTDIR][..]),
                };
                let got = errno(fs::remove_dir(&full));
                check(step, &format!("rmdir {path:?}"), got, want)?;
                if got.is_ok() {
                    m.nodes.remove(&path);
                }
            }
            8 => {
                // linkat checks in this order: old name, new parent, new name, then type.
                let want = match (m.nodes.get(&path), m.parent_ok(&other), m.nodes.get(&other)) {
                    (None, _, _) => Err(&[libc::ENOENT, libc::ENOTDIR][..]),
                    (_, Err(_), _) => Err(&[libc::ENOENT, libc::ENOTDIR][..]),
                    (_, _, Some(_)) => Err(&[libc::EEXIST][..]),
                    (Some(Node::Dir), _, _) => Err(&[libc::EPERM][..]),
                    (Some(_), Ok(()), None) => Ok(()),
                };
                let got = errno(fs::hard_link(&full, root.join(&other)));
                check(step, &format!("link {path:?} -> {other:?}"), got, want)?;
                if let (Ok(()), Some(node)) = (got, m.nodes.get(&path).copied()) {
                    m.nodes.insert(other.clone(), node);
                    if let Node::File(id) = node {
                        m.unsettle(id);
                    }
                }
            }
            9 => {
                if let Some(Node::File(id)) = m.nodes.get(&path) {
                    if held.len() < 4 {
                        let file = OpenOptions::new()
                            .read(true)
                            .write(true)
                            .open(&full)
                            .map_err(|e| format!("step {step}: open {path:?}: {e}"))?;
                        held.push(Held { file, content: *id });
                    }
                }
            }
            10 => {
                if !held.is_empty() {
                    let i = rng.below(held.len() as u64) as usize;
                    let h = &held[i];
                    let offset = rng.below(30_000);
                    let data = vec![rng.below(256) as u8; 1 + rng.below(5000) as usize];
                    h.file
                        .write_all_at(&data, offset)
                        .map_err(|e| format!("step {step}: write through held handle: {e}"))?;
                    write_model(&mut m.contents[h.content], offset as usize, &data);
                    if offset + data.len() as u64 >= min_size {
                        m.settle(h.content);
                    }
                    let mut back = vec![0; m.contents[h.content].len()];
                    h.file
                        .read_exact_at(&mut back, 0)
                        .map_err(|e| format!("step {step}: read through held handle: {e}"))?;
                    if back != m.contents[h.content] {
                        return Err(format!("step {step}: held handle reads other bytes"));
                    }
                    if rng.below(4) == 0 {
                        let sync = if rng.below(2) == 0 {
                            h.file.sync_all()
                        } else {
                            h.file.sync_data()
                        };
                        sync.map_err(|e| format!("step {step}: fsync held handle: {e}"))?;
                    }
                    if rng.below(3) == 0 {
                        held.swap_remove(i);
                    }
                }
            }
            11 => {
                let kind = if rng.below(2) == 0 {
                    SpecialKind::Symlink
                } else {
                    SpecialKind::Fifo
                };
                let want = m.parent_ok(&path).and_then(|_| {
                    if m.nodes.contains_key(&path) {
                        Err(libc::EEXIST)
                    } else {
                        Ok(())
                    }
                });
                let got = errno(match kind {
                    SpecialKind::Symlink => std::os::unix::fs::symlink(SYMLINK_TARGET, &full),
                    SpecialKind::Fifo => mkfifo(&full),
                });
                check(step, &format!("{kind:?} {path:?}"), got, errs(want))?;
                if got.is_ok() {
                    m.contents.push(Vec::new());
                    m.settled.push(false);
                    m.nodes
                        .insert(path, Node::Special(kind, m.contents.len() - 1));
                }
            }
            _ => {
                compare_tree(root, &m).map_err(|e| format!("step {step}: {e}"))?;
                if let Some(p) = placement {
                    check_placement(p, &m, &mut checked)
                        .map_err(|e| format!("step {step}: {e}"))?;
                }
            }
        }
    }
    compare_tree(root, &m).map_err(|e| format!("at the end: {e}"))?;
    if let Some(p) = placement {
        check_placement(p, &m, &mut checked).map_err(|e| format!("at the end: {e}"))?;
        println!(
            "placement checks: {} inline, {} redirected files found where policy `{}` wants them",
            checked[0], checked[1], p.policy
        );
        // A run this long always meets both placements; none means the check did not run.
        if steps >= 2_000 && checked.contains(&0) {
            return Err(format!(
                "placement never checked one way in {steps} steps: {checked:?} [inline, redirected]"
            ));
        }
    }
    Ok(())
}

/// Every settled file with one name is where the policy wants it, as the host sees it.
fn check_placement(p: &Placement, m: &Model, checked: &mut [usize; 2]) -> Result<(), String> {
    use std::os::unix::ffi::OsStrExt;
    for (path, node) in &m.nodes {
        let Node::File(id) = node else { continue };
        if !m.settled[*id] || m.names(*id) != 1 {
            continue;
        }
        let size = m.contents[*id].len() as u64;
        let want = p.policy.redirects(path.as_os_str().as_bytes(), size);
        let meta = fsredirect::meta::decoded_at(&p.guest.join(path))
            .map_err(|e| format!("reading metadata of {path:?}: {e}"))?;
        let redirected = matches!(meta, Some(fsredirect::meta::Meta::Redirect { .. }));
        if redirected != want {
            return Err(format!(
                "{path:?} ({size} bytes) is {}, policy `{}` wants it {}",
                placement_word(redirected),
                p.policy,
                placement_word(want)
            ));
        }
        checked[usize::from(redirected)] += 1;
    }
    Ok(())
}

fn placement_word(redirected: bool) -> &'static str {
    if redirected {
        "redirected"
    } else {
        "inline"
    }
}

fn errs(want: Result<(), i32>) -> Result<(), &'static [i32]> {
    match want {
        Ok(()) => Ok(()),
        Err(libc::EEXIST) => Err(&[libc::EEXIST]),
        Err(libc::EISDIR) => Err(&[libc::EISDIR]),
        Err(libc::ENOTDIR) => Err(&[libc::ENOTDIR]),
        Err(_) => Err(&[libc::ENOENT]),
    }
}

fn random_path(rng: &mut Rng, m: &Model) -> PathBuf {
    if !m.nodes.is_empty() && rng.below(3) != 0 {
        let i = rng.below(m.nodes.len() as u64) as usize;
        return m.nodes.keys().nth(i).cloned().unwrap_or_default();
    }
    let depth = 1 + rng.below(3);
    let mut p = PathBuf::new();
    for _ in 0..depth {
        p.push(NAMES[rng.below(NAMES.len() as u64) as usize]);
    }
    p
}

fn write_model(content: &mut Vec<u8>, offset: usize, data: &[u8]) {
    if content.len() < offset + data.len() {
        content.resize(offset + data.len(), 0);
    }
    content[offset..offset + data.len()].copy_from_slice(data);
}

fn rename_outcome(m: &Model, from: &Path, to: &Path) -> Result<(), &'static [i32]> {
    let src = match m.nodes.get(from) {
        Some(n) => *n,
        None => return Err(&[libc::ENOENT, libc::ENOTDIR]),
    };
    if m.parent_ok(to).is_err() {
        return Err(&[libc::ENOENT, libc::ENOTDIR]);
    }
    if from == to {
        return Ok(());
    }
    if src == Node::Dir && to.starts_with(from) {
        return Err(&[libc::EINVAL]);
    }
    match (src, m.nodes.get(to)) {
        (_, None) => Ok(()),
        (Node::Dir, Some(Node::Dir)) if m.is_empty_dir(to) => Ok(()),
        (Node::Dir, Some(Node::Dir)) => Err(&[libc::ENOTEMPTY, libc::EEXIST]),
        // Onto its own ancestor Linux reports ENOTEMPTY first.
        (_, Some(Node::Dir)) => Err(&[libc::EISDIR, libc::ENOTEMPTY]),
        (Node::Dir, Some(_)) => Err(&[libc::ENOTDIR]),
        (_, Some(_)) => Ok(()),
    }
}

fn apply_rename(m: &mut Model, from: &Path, to: &Path) {
    if from == to {
        return;
    }
    if let (Some(a), Some(b)) = (m.nodes.get(from), m.nodes.get(to)) {
        if a.id().is_some() && a.id() == b.id() {
            // Two links of one file: POSIX rename does nothing.
            return;
        }
    }
    if let Some(Node::File(id)) = m.nodes.remove(to) {
        m.unsettle(id);
    }
    let moved: Vec<(PathBuf, Node)> = m
        .nodes
        .iter()
        .filter(|(p, _)| p.starts_with(from))
        .map(|(p, n)| (p.clone(), *n))
        .collect();
    for (p, n) in moved {
        m.nodes.remove(&p);
        let rest = p.strip_prefix(from).unwrap_or(Path::new(""));
        // `join("")` would add a trailing slash.
        let dest = if rest.as_os_str().is_empty() {
            to.to_path_buf()
        } else {
            to.join(rest)
        };
        m.nodes.insert(dest, n);
        if let Node::File(id) = n {
            if rest.as_os_str().is_empty() {
                m.settle(id);
            } else {
                // Below a renamed directory: moved when it next changes.
                m.unsettle(id);
            }
        }
    }
}

fn compare_tree(root: &Path, m: &Model) -> Result<(), String> {
    let mut seen = BTreeMap::new();
    collect(root, Path::new(""), &mut seen).map_err(|e| format!("listing: {e}"))?;
    let want: Vec<_> = m.nodes.keys().collect();
    let got: Vec<_> = seen.keys().collect();
    if want != got {
        return Err(format!("tree differs: have {got:?}, model {want:?}"));
    }
    for (path, node) in &m.nodes {
        let kind = seen[path];
        let expected = match node {
            Node::Dir => 'd',
            Node::File(_) => 'f',
            Node::Special(SpecialKind::Symlink, _) => 'l',
            Node::Special(SpecialKind::Fifo, _) => 'p',
        };
        if kind != expected {
            return Err(format!("{path:?} is of type {kind}, model says {expected}"));
        }
        match node {
            Node::File(id) => {
                let data = fs::read(root.join(path)).map_err(|e| format!("read {path:?}: {e}"))?;
                if data != m.contents[*id] {
                    return Err(format!("{path:?} content differs from the model"));
                }
            }
            Node::Special(SpecialKind::Symlink, _) => {
                let target = fs::read_link(root.join(path))
                    .map_err(|e| format!("readlink {path:?}: {e}"))?;
                if target != Path::new(SYMLINK_TARGET) {
                    return Err(format!("{path:?} points to {target:?}"));
                }
            }
            _ => {}
        }
    }
    Ok(())
}

/// Records each entry's type: d(irectory), f(ile), l(ink), p(ipe), ? otherwise.
fn collect(root: &Path, rel: &Path, out: &mut BTreeMap<PathBuf, char>) -> io::Result<()> {
    use std::os::unix::fs::FileTypeExt;
    for entry in fs::read_dir(root.join(rel))? {
        let entry = entry?;
        let p = rel.join(entry.file_name());
        // symlink_metadata, not the d_type: regular entries come back as DT_UNKNOWN.
        let ft = fs::symlink_metadata(root.join(&p))?.file_type();
        let kind = if ft.is_dir() {
            'd'
        } else if ft.is_file() {
            'f'
        } else if ft.is_symlink() {
            'l'
        } else if ft.is_fifo() {
            'p'
        } else {
            '?'
        };
        out.insert(p.clone(), kind);
        if ft.is_dir() {
            collect(root, &p, out)?;
        }
    }
    Ok(())
}

fn mkfifo(path: &Path) -> io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: a valid NUL-terminated path.
    if unsafe { libc::mkfifo(c.as_ptr(), 0o644) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}
