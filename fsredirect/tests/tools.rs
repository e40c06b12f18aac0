//! The host tools as an administrator runs them: the real `fsredirect` binary on shares
//! whose files were written through the engine ([`RedirectFs`]), healthy and deliberately
//! damaged.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::process::{Command, Output};

use fsredirect::testshare::{fork_guard, TestShare};
use fsredirect::Store;
use serde_json::Value;

/// The shared fixture, with the tools run on it.
struct Share(TestShare);

impl std::ops::Deref for Share {
    type Target = TestShare;
    fn deref(&self) -> &TestShare {
        &self.0
    }
}

impl Share {
    fn new() -> Self {
        Share(TestShare::new())
    }

    /// Runs `fsredirect SUBCOMMAND --share SPEC ARGS...`.
    fn tool(&self, subcommand: &str, args: &[&str]) -> Output {
        let _guard = fork_guard();
        Command::new(env!("CARGO_BIN_EXE_fsredirect"))
            .arg(subcommand)
            .arg("--share")
            .arg(&self.spec)
            .args(args)
            .output()
            .unwrap()
    }

    /// Runs a tool with `--json`, checks its exit code and returns the parsed document.
    fn json(&self, subcommand: &str, args: &[&str], code: i32) -> Value {
        let mut all = args.to_vec();
        all.push("--json");
        let out = self.tool(subcommand, &all);
        assert_eq!(out.status.code(), Some(code), "{}", describe(&out));
        serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("{subcommand} --json is not JSON ({e}): {}", describe(&out)))
    }
}

fn describe(out: &Output) -> String {
    format!(
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The kinds of the mismatches in a `verify --json` document, sorted.
fn kinds(report: &Value) -> Vec<String> {
    let mut kinds: Vec<String> = report["mismatches"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            format!(
                "{} {}",
                m["kind"].as_str().unwrap(),
                m["path"].as_str().unwrap()
            )
        })
        .collect();
    kinds.sort();
    kinds
}

/// 1. Write files (one in a directory, one hard-linked) through the engine.
/// 2. `verify` exits 0, says so, and its JSON counts the stubs and objects.
#[test]
fn verify_finds_nothing_on_a_share_written_through_the_engine() {
    let share = Share::new();
    let server = share.serve();
    server.write("docs/a.txt", b"hello\n");
    server.write("b", b"bee");
    server.link("b", "docs/b-link");
    drop(server);
    let out = share.tool("verify", &[]);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    assert!(stdout(&out).contains("ok: every stub agrees with its stored object"));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("verify: "),
        "final count on stderr"
    );
    let report = share.json("verify", &[], 0);
    assert_eq!(report["ok"], true);
    let empty = Share::new();
    let out = empty.tool("verify", &[]);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("verify: 0 entries walked"),
        "a final count even for an empty share: {}",
        describe(&out)
    );
    assert_eq!(report["counts"]["stubs"], 3);
    assert_eq!(report["counts"]["objects"], 3);
    assert_eq!(report["counts"]["directories"], 1);
}

/// 1. Write a file through the engine.
/// 2. `inspect` by relative and by absolute path: the same stub, its object, sizes, links and
///    recorded path; exit 0.
/// 3. Remove the object: `inspect` says so and exits 1.
#[test]
fn inspect_describes_a_stub_by_either_path() {
    let share = Share::new();
    share.serve().write("docs/a.txt", b"hello\n");
    let out = share.tool("inspect", &["docs/a.txt"]);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    let text = stdout(&out);
    for expected in [
        "kind:       stub (redirected: data in the store)",
        "size:       6 bytes (0 bytes allocated in the guest tree)",
        "hard links: 1 in the guest tree, 1 in the store",
        "recorded:   docs/a.txt (current)",
        "state:      ok",
    ] {
        assert!(text.contains(expected), "missing {expected:?} in\n{text}");
    }
    assert!(text.contains(&share.volume.join("docs/a.txt").display().to_string()));
    let abs = share.guest.join("docs/a.txt");
    let v = share.json("inspect", &[abs.to_str().unwrap()], 0);
    assert_eq!(v["path"], "docs/a.txt");
    assert_eq!(v["kind"], "stub");
    assert_eq!(v["size"], 6);
    assert_eq!(v["object"]["size"], 6);
    assert_eq!(
        v["object"]["path"],
        share.volume.join("docs/a.txt").to_str().unwrap()
    );
    fs::remove_file(share.volume.join("docs/a.txt")).unwrap();
    let v = share.json("inspect", &["docs/a.txt"], 1);
    assert_eq!(v["state"], "stored object missing");
    assert_eq!(v["object"]["exists"], false);
}

/// 1. Write files through the engine, rename a directory, hard-link a file.
/// 2. Damage the share from both sides: delete an object (stub without data), drop an object
///    with no stub (data without stub), append to an object (size mismatch), replace a hard
///    link's object with a copy (links not mirrored).
/// 3. `verify` exits 1 and lists exactly those; `repair --dry-run` exits 1 and changes nothing.
/// 4. `repair` exits 0 and reports each action; `verify` then exits 0; no byte was deleted.
#[test]
fn repair_fixes_a_damaged_share_until_verify_finds_nothing() {
    let share = Share::new();
    let server = share.serve();
    server.write("lost.txt", b"gone for good");
    server.write("grown.txt", b"0123");
    server.write("old/inner.txt", b"inner");
    server.write("a", b"linked");
    server.link("a", "a-too");
    server.rename("old", "new");
    drop(server);
    fs::remove_file(share.volume.join("lost.txt")).unwrap();
    fs::write(share.volume.join("stray.bin"), b"nobody's").unwrap();
    fs::write(share.volume.join("grown.txt"), b"0123456789").unwrap();
    fs::remove_file(share.volume.join("a-too")).unwrap();
    fs::write(share.volume.join("a-too"), b"linked").unwrap();

    let report = share.json("verify", &[], 1);
    assert_eq!(
        kinds(&report),
        [
            "links-not-mirrored a-too",
            "object-missing lost.txt",
            "object-without-stub stray.bin",
            "size-mismatch grown.txt",
        ]
    );
    assert_eq!(report["stale_hints"][0]["path"], "new/inner.txt");
    assert_eq!(report["stale_hints"][0]["recorded"], "old/inner.txt");

    let plan = share.json("repair", &["--dry-run"], 1);
    assert_eq!(plan["actions"].as_array().unwrap().len(), 5, "{plan:#}");
    assert_eq!(
        kinds(&share.json("verify", &[], 1)).len(),
        4,
        "dry run changed something"
    );

    let out = share.tool("repair", &[]);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    let text = stdout(&out);
    assert!(
        text.contains("5 repairs made; verify now finds nothing"),
        "{text}"
    );
    let out = share.tool("verify", &[]);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));

    // The object's bytes won the size mismatch; the stub is still all hole.
    assert_eq!(
        fs::read(share.volume.join("grown.txt")).unwrap(),
        b"0123456789"
    );
    let stub = fs::metadata(share.guest.join("grown.txt")).unwrap();
    assert_eq!((stub.len(), stub.blocks()), (10, 0));
    // The lost data is zeros of the stub's size, readable by the guest.
    assert_eq!(
        fs::read(share.volume.join("lost.txt")).unwrap(),
        vec![0u8; 13]
    );
    // The stray object was kept in lost+found.
    let lf: Vec<_> = fs::read_dir(share.control.join("lost+found"))
        .unwrap()
        .collect();
    assert_eq!(lf.len(), 1);
    let kept = lf[0].as_ref().unwrap().path().join("store/stray.bin");
    assert_eq!(fs::read(kept).unwrap(), b"nobody's");
    // The hard links are one object again.
    let (a, b) = (
        fs::metadata(share.volume.join("a")).unwrap(),
        fs::metadata(share.volume.join("a-too")).unwrap(),
    );
    assert_eq!(a.ino(), b.ino());
    // The guest reads what the store holds.
    let server = share.serve();
    assert_eq!(server.read("grown.txt"), b"0123456789");
    assert_eq!(server.read("new/inner.txt"), b"inner");
    drop(server);
    let again = share.json("repair", &[], 0);
    assert_eq!(again["actions"].as_array().unwrap().len(), 0, "{again:#}");
}

/// 1. Leave an object without a stub and an orphan-area leftover.
/// 2. `gc --dry-run` exits 1 and deletes nothing; `gc` deletes both, reports the bytes
///    reclaimed and exits 0; `verify` then exits 0.
#[test]
fn gc_reclaims_objects_nobody_names() {
    let share = Share::new();
    share.serve().write("keep", b"kept");
    fs::create_dir(share.volume.join("old")).unwrap();
    fs::write(share.volume.join("old/stray"), vec![1u8; 64 * 1024]).unwrap();
    fs::write(share.control.join("orphans/12-0"), vec![2u8; 4096]).unwrap();
    let plan = share.json("gc", &["--dry-run"], 1);
    assert_eq!(plan["objects"][0]["path"], "old/stray");
    assert!(share.volume.join("old/stray").exists());
    let out = share.tool("gc", &[]);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    assert!(
        stdout(&out).contains("2 objects deleted"),
        "{}",
        describe(&out)
    );
    assert!(!share.volume.join("old").exists());
    assert!(!share.control.join("orphans/12-0").exists());
    assert_eq!(fs::read(share.volume.join("keep")).unwrap(), b"kept");
    let again = share.json("gc", &[], 0);
    assert_eq!(again["reclaimed"], 0);
    assert_eq!(share.tool("verify", &[]).status.code(), Some(0));
}

/// 1. Write a file through the engine; `hydrate` it: an inline file with the data, no
///    object; `inspect` says inline.
/// 2. `dehydrate` it back: a sparse stub and an object; the guest reads the same bytes.
/// 3. `verify` exits 0 after each step.
#[test]
fn hydrate_and_dehydrate_round_trip() {
    let share = Share::new();
    share.serve().write("d/f", b"round trip");
    let v = share.json("hydrate", &["d/f"], 0);
    assert_eq!(v["changed"], true);
    assert_eq!(v["bytes"], 10);
    assert_eq!(fs::read(share.guest.join("d/f")).unwrap(), b"round trip");
    assert!(!share.volume.join("d/f").exists());
    assert_eq!(share.json("inspect", &["d/f"], 0)["kind"], "inline");
    assert_eq!(share.tool("verify", &[]).status.code(), Some(0));

    let out = share.tool("dehydrate", &[share.guest.join("d/f").to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    assert!(stdout(&out).contains("dehydrated d/f"));
    let stub = fs::metadata(share.guest.join("d/f")).unwrap();
    assert_eq!((stub.len(), stub.blocks()), (10, 0));
    assert_eq!(fs::read(share.volume.join("d/f")).unwrap(), b"round trip");
    assert_eq!(share.serve().read("d/f"), b"round trip");
    assert_eq!(share.tool("verify", &[]).status.code(), Some(0));
}

/// 1. Hold the volume as a server does (`Store::open`).
/// 2. Every tool exits 2 with an error that says a server uses the volume, which process,
///    and what to do; with --json the error is also a JSON document.
/// 3. Once the server is gone, the tools run.
#[test]
fn every_tool_refuses_a_volume_in_use_by_a_server() {
    let share = Share::new();
    share.serve().write("f", b"x");
    let server = {
        let _guard = fork_guard();
        Store::open(&share.store, "t").unwrap()
    };
    let cases: [(&str, &[&str]); 6] = [
        ("verify", &[]),
        ("inspect", &["f"]),
        ("repair", &[]),
        ("gc", &[]),
        ("hydrate", &["f"]),
        ("dehydrate", &["f"]),
    ];
    for (tool, args) in cases {
        let out = share.tool(tool, args);
        assert_eq!(out.status.code(), Some(2), "{tool}: {}", describe(&out));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("is in use by a server"), "{tool}: {err}");
        assert!(
            err.contains(&format!("pid {}", std::process::id())),
            "{tool}: {err}"
        );
        assert!(err.contains("stop it"), "{tool}: {err}");
        let v = share.json(tool, args, 2);
        assert!(v["error"].as_str().unwrap().contains("in use by a server"));
    }
    drop(server);
    assert_eq!(share.tool("verify", &[]).status.code(), Some(0));
}

/// `--help` of every subcommand has examples and its exit codes.
#[test]
fn every_tool_has_help_with_examples_and_exit_codes() {
    for tool in [
        "mount",
        "inspect",
        "verify",
        "repair",
        "gc",
        "hydrate",
        "dehydrate",
    ] {
        let _guard = fork_guard();
        let out = Command::new(env!("CARGO_BIN_EXE_fsredirect"))
            .args([tool, "--help"])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(0));
        let text = stdout(&out);
        assert!(text.contains("Examples:"), "{tool}: {text}");
        assert!(text.contains("Exit codes:"), "{tool}: {text}");
        assert!(
            text.contains(&format!("fsredirect {tool} --share")),
            "{tool}: {text}"
        );
    }
}

/// A share without a store, or a store that was never made, is an error (exit 2) naming it.
#[test]
fn shares_the_tools_cannot_work_on_are_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let run = |spec: String| {
        let _guard = fork_guard();
        Command::new(env!("CARGO_BIN_EXE_fsredirect"))
            .args(["verify", "--share", &spec])
            .output()
            .unwrap()
    };
    let out = run(format!("tag=t,dir={}", tmp.path().display()));
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("has no store="));
    let out = run(format!(
        "tag=t,dir={0}/g,store={0}/nowhere",
        tmp.path().display()
    ));
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("has no volume `t`"));
    assert!(
        !tmp.path().join("nowhere").exists(),
        "verify must not make a store"
    );
}
