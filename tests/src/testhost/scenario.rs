//! What one VMM run inside the test host does, and the parameter format that carries a batch
//! of them from the runner to `testhost-agent`.
//!
//! The runner writes the batch as text at the start of a small raw disk (the parameter disk);
//! the test host's `/init` copies it to a file and hands it to the agent. One line per scenario,
//! tab-separated `key=value` fields after the word `scenario`:
//!
//! ```text
//! FSR-TESTHOST-PARAMS v1
//! scenario<TAB>id=boot-exit-code<TAB>guest=exit<TAB>vcpus=1<TAB>mem=128M<TAB>timeout=60<TAB>arg=42
//! ```

use std::fmt;

/// First line of a parameter file; `/init` finds the parameter disk by it.
pub const PARAMS_MAGIC: &str = "FSR-TESTHOST-PARAMS v1";

/// Which virtual machine monitor runs a scenario. Only the boot benchmark runs the peers; they
/// are in its test-host image (`build-testhost.sh --bench`), not in the tests' one.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum VmmKind {
    /// Our `hypervisor run`.
    #[default]
    Ours,
    /// `floor-vmm`: the least a VMM must do to boot the guest (bench/floor-vmm).
    Floor,
    /// QEMU's `microvm` machine with KVM.
    QemuMicrovm,
}

impl VmmKind {
    /// Every kind, in report order.
    pub const ALL: [VmmKind; 3] = [VmmKind::Ours, VmmKind::Floor, VmmKind::QemuMicrovm];

    /// The word for this kind in parameter files and reports.
    pub fn word(self) -> &'static str {
        match self {
            VmmKind::Ours => "ours",
            VmmKind::Floor => "floor",
            VmmKind::QemuMicrovm => "qemu-microvm",
        }
    }

    /// The kind a word names.
    pub fn from_word(word: &str) -> Option<VmmKind> {
        VmmKind::ALL.into_iter().find(|k| k.word() == word)
    }

    /// The program inside the test host.
    pub fn test_host_binary(self) -> &'static str {
        match self {
            VmmKind::Ours => "/bin/hypervisor",
            VmmKind::Floor => "/bin/floor-vmm",
            VmmKind::QemuMicrovm => "/opt/qemu/bin/qemu-system-x86_64",
        }
    }

    /// The exit status of this VMM when the guest writes `code` to the exit port (QEMU's
    /// `isa-debug-exit` reports `(code << 1) | 1`).
    pub fn exit_status(self, code: i32) -> i32 {
        match self {
            VmmKind::Ours | VmmKind::Floor => code,
            VmmKind::QemuMicrovm => (code << 1) | 1,
        }
    }
}

/// One VMM run inside the test host: which guest scenario, with which VMM settings, and what
/// counts as a pass.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Scenario {
    /// Unique label in a batch; marker lines and verdicts use it.
    pub id: String,
    /// The VMM that runs it (ours unless the boot benchmark says otherwise).
    pub vmm: VmmKind,
    /// Guest scenario name, passed as `fsr.scenario=` (docs/guest-protocol.md).
    pub guest: String,
    /// Scenario argument, passed as `fsr.arg=` when set.
    pub arg: Option<String>,
    /// `--vcpus` for the VMM.
    pub vcpus: u32,
    /// `--mem` for the VMM, e.g. `128M`.
    pub mem: String,
    /// A line fed to the VMM's standard input once the guest prints `@@fsr echo-ready`.
    pub input: Option<String>,
    /// Extra words appended to the guest kernel command line.
    pub extra_cmdline: Vec<String>,
    /// Extra VMM arguments, appended after the standard ones.
    pub vmm_args: Vec<String>,
    /// Directories under `/share` in the test host emptied (or created) before the VMM starts.
    pub fresh_dirs: Vec<String>,
    /// Directories under `/share` in the test host created if missing (contents kept).
    pub made_dirs: Vec<String>,
    /// The VMM exit code that counts as a pass.
    pub expect_code: i32,
    /// Lines (substrings) that must appear in the VMM's output for a pass.
    pub expect_output: Vec<String>,
    /// Limit in the test host's clock (seconds) before the agent kills the VMM.
    pub timeout_secs: u32,
    /// The user and group (ids) the VMM runs as, if not root: the agent gives them the
    /// scenario's fresh and made directories and `/dev/kvm` first.
    pub user: Option<(u32, u32)>,
}

/// A scenario that cannot be written into the parameter file.
#[derive(Debug, PartialEq, Eq)]
pub struct InvalidScenario {
    /// The scenario's id.
    pub id: String,
    /// What is wrong with it.
    pub reason: String,
}

impl fmt::Display for InvalidScenario {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "scenario '{}': {}", self.id, self.reason)
    }
}

impl std::error::Error for InvalidScenario {}

impl Scenario {
    /// A scenario running guest scenario `guest` with 1 vCPU and 128 MiB, expecting exit code 0.
    pub fn new(id: &str, guest: &str) -> Self {
        Scenario {
            id: id.to_owned(),
            vmm: VmmKind::Ours,
            guest: guest.to_owned(),
            arg: None,
            vcpus: 1,
            mem: "128M".to_owned(),
            input: None,
            extra_cmdline: Vec::new(),
            vmm_args: Vec::new(),
            fresh_dirs: Vec::new(),
            made_dirs: Vec::new(),
            expect_code: 0,
            expect_output: Vec::new(),
            timeout_secs: 60,
            user: None,
        }
    }

    /// Runs the scenario under another VMM (the boot benchmark's peers). The peers take no
    /// extra VMM arguments and one vCPU (the floor).
    pub fn vmm(mut self, vmm: VmmKind) -> Self {
        self.vmm = vmm;
        self
    }

    /// Sets `fsr.arg`.
    pub fn arg(mut self, arg: &str) -> Self {
        self.arg = Some(arg.to_owned());
        self
    }

    /// Sets the number of vCPUs.
    pub fn vcpus(mut self, vcpus: u32) -> Self {
        self.vcpus = vcpus;
        self
    }

    /// Sets the line fed to the guest's console after `@@fsr echo-ready`.
    pub fn input(mut self, line: &str) -> Self {
        self.input = Some(line.to_owned());
        self
    }

    /// Sets the expected VMM exit code.
    pub fn expect_code(mut self, code: i32) -> Self {
        self.expect_code = code;
        self
    }

    /// Adds a substring that must appear in the VMM's output.
    pub fn expect_output(mut self, text: &str) -> Self {
        self.expect_output.push(text.to_owned());
        self
    }

    /// Adds an extra VMM argument.
    pub fn vmm_arg(mut self, arg: &str) -> Self {
        self.vmm_args.push(arg.to_owned());
        self
    }

    /// Empties (or creates) `dir` in the test host before the VMM starts; `dir` must lie under
    /// `/share`, the share disk's mount point.
    pub fn fresh_dir(mut self, dir: &str) -> Self {
        self.fresh_dirs.push(dir.to_owned());
        self
    }

    /// Runs our VMM as user `uid` and group `gid` instead of root.
    pub fn as_user(mut self, uid: u32, gid: u32) -> Self {
        self.user = Some((uid, gid));
        self
    }

    /// Sets the limit, in the test host's clock, before the agent kills the VMM.
    pub fn timeout_secs(mut self, secs: u32) -> Self {
        self.timeout_secs = secs;
        self
    }

    /// Creates `dir` (and its parents) in the test host if missing, keeping what it holds;
    /// `dir` must lie under `/share`.
    pub fn made_dir(mut self, dir: &str) -> Self {
        self.made_dirs.push(dir.to_owned());
        self
    }

    /// Adds an extra word to the guest kernel command line.
    pub fn cmdline(mut self, word: &str) -> Self {
        self.extra_cmdline.push(word.to_owned());
        self
    }

    /// The guest kernel command line for this scenario.
    pub fn guest_cmdline(&self) -> String {
        let mut words = vec![
            "console=ttyS0".to_owned(),
            "reboot=k".to_owned(),
            "panic=-1".to_owned(),
            "quiet".to_owned(),
            "i8042.noaux".to_owned(),
            format!("fsr.scenario={}", self.guest),
        ];
        if let Some(arg) = &self.arg {
            words.push(format!("fsr.arg={arg}"));
        }
        words.extend(self.extra_cmdline.iter().cloned());
        words.join(" ")
    }

    /// The VMM's arguments for this scenario, given where the guest image is: the same guest,
    /// memory and command line whichever VMM runs it.
    pub fn vmm_argv(&self, kernel: &str, initrd: &str) -> Vec<String> {
        let mem = self.mem.clone();
        let cmdline = self.guest_cmdline();
        let vcpus = self.vcpus.to_string();
        // The floor takes the flags of `hypervisor run`.
        let run_flags = [
            "--kernel",
            kernel,
            "--initrd",
            initrd,
            "--mem",
            &mem,
            "--vcpus",
            &vcpus,
            "--cmdline",
            &cmdline,
        ];
        let words: Vec<&str> = match self.vmm {
            VmmKind::Ours => std::iter::once("run").chain(run_flags).collect(),
            VmmKind::Floor => run_flags.to_vec(),
            // No default devices, no option ROMs: QEMU's leanest configuration of microvm.
            VmmKind::QemuMicrovm => vec![
                "-M",
                "microvm,x-option-roms=off",
                "-accel",
                "kvm",
                "-cpu",
                "host",
                "-m",
                &mem,
                "-smp",
                &vcpus,
                "-nodefaults",
                "-no-user-config",
                "-display",
                "none",
                "-serial",
                "stdio",
                "-no-reboot",
                "-device",
                "isa-debug-exit,iobase=0xf4,iosize=0x01",
                "-kernel",
                kernel,
                "-initrd",
                initrd,
                "-append",
                &cmdline,
            ],
        };
        let mut argv: Vec<String> = words.into_iter().map(str::to_owned).collect();
        argv.extend(self.vmm_args.iter().cloned());
        argv
    }

    /// Checks that every field fits the parameter format and the kernel command line.
    pub fn validate(&self) -> Result<(), InvalidScenario> {
        let bad = |reason: String| {
            Err(InvalidScenario {
                id: self.id.clone(),
                reason,
            })
        };
        let word_ok = |s: &str| !s.is_empty() && !s.chars().any(|c| c.is_whitespace() || c == '"');
        if !word_ok(&self.id) {
            return bad("the id must be one word without quotes".into());
        }
        if !word_ok(&self.guest) {
            return bad(format!("guest scenario '{}' must be one word", self.guest));
        }
        if let Some(arg) = &self.arg {
            if !word_ok(arg) {
                return bad(format!("fsr.arg '{arg}' must be one word"));
            }
        }
        if self.vcpus == 0 {
            return bad("vcpus must be at least 1".into());
        }
        if self.vmm != VmmKind::Ours && !self.vmm_args.is_empty() {
            return bad(format!(
                "VMM arguments are for our VMM; {} takes none",
                self.vmm.word()
            ));
        }
        if self.vmm != VmmKind::Ours && self.user.is_some() {
            return bad(format!(
                "only our VMM runs as another user; {} runs as root",
                self.vmm.word()
            ));
        }
        if self.vmm == VmmKind::Floor && self.vcpus != 1 {
            return bad("the floor VMM runs one vCPU only".into());
        }
        if !word_ok(&self.mem) {
            return bad(format!("mem '{}' must be one word like 128M", self.mem));
        }
        for word in &self.extra_cmdline {
            if !word_ok(word) {
                return bad(format!(
                    "kernel command-line word '{word}' must be one word"
                ));
            }
        }
        let field_ok = |s: &str| !s.contains(['\t', '\n', '\r', '\0']);
        if let Some(line) = &self.input {
            if !field_ok(line) {
                return bad("the input line must not contain tabs, line breaks or NUL".into());
            }
        }
        if let Some(arg) = self.vmm_args.iter().find(|a| !field_ok(a)) {
            return bad(format!(
                "VMM argument {arg:?} must not contain tabs, line breaks or NUL"
            ));
        }
        if let Some(dir) =
            self.fresh_dirs.iter().chain(&self.made_dirs).find(|d| {
                !d.starts_with("/share/") || d.split('/').any(|c| c == "..") || !field_ok(d)
            })
        {
            return bad(format!(
                "directory {dir:?} must be a path under /share/ without '..'"
            ));
        }
        if self.timeout_secs == 0 {
            return bad("timeout must be at least 1 s".into());
        }
        Ok(())
    }
}

/// Writes a batch as parameter-file text. Fails on the first invalid scenario or duplicate id.
pub fn encode_params(scenarios: &[Scenario]) -> Result<String, InvalidScenario> {
    let mut out = format!("{PARAMS_MAGIC}\n");
    for (i, s) in scenarios.iter().enumerate() {
        s.validate()?;
        if scenarios[..i].iter().any(|o| o.id == s.id) {
            return Err(InvalidScenario {
                id: s.id.clone(),
                reason: "the id appears twice in the batch".into(),
            });
        }
        let mut fields = vec![
            "scenario".to_owned(),
            format!("id={}", s.id),
            format!("vmm={}", s.vmm.word()),
            format!("guest={}", s.guest),
            format!("vcpus={}", s.vcpus),
            format!("mem={}", s.mem),
            format!("timeout={}", s.timeout_secs),
        ];
        if let Some(arg) = &s.arg {
            fields.push(format!("arg={arg}"));
        }
        if let Some(line) = &s.input {
            fields.push(format!("input={line}"));
        }
        fields.extend(s.extra_cmdline.iter().map(|w| format!("cmdline={w}")));
        fields.extend(s.vmm_args.iter().map(|a| format!("vmm-arg={a}")));
        fields.extend(s.fresh_dirs.iter().map(|d| format!("fresh-dir={d}")));
        fields.extend(s.made_dirs.iter().map(|d| format!("made-dir={d}")));
        if let Some((uid, gid)) = s.user {
            fields.push(format!("user={uid}:{gid}"));
        }
        out.push_str(&fields.join("\t"));
        out.push('\n');
    }
    Ok(out)
}

/// Reads parameter-file text back into scenarios (the agent's side). Verdict fields
/// (`expect_*`) are not carried: the runner on the host judges.
pub fn decode_params(text: &str) -> Result<Vec<Scenario>, String> {
    let mut lines = text.lines();
    match lines.next() {
        Some(first) if first.trim_end() == PARAMS_MAGIC => {}
        other => {
            return Err(format!(
                "parameter file starts with {other:?}, expected '{PARAMS_MAGIC}'"
            ))
        }
    }
    let mut out = Vec::new();
    for (n, line) in lines.enumerate() {
        let line = line.trim_end_matches('\r');
        if line.trim().is_empty() {
            continue;
        }
        let mut fields = line.split('\t');
        if fields.next() != Some("scenario") {
            return Err(format!(
                "parameter line {}: expected 'scenario': {line:?}",
                n + 2
            ));
        }
        let mut s = Scenario::new("", "");
        for field in fields {
            let (key, value) = field
                .split_once('=')
                .ok_or_else(|| format!("parameter line {}: field {field:?} has no '='", n + 2))?;
            let number = |v: &str| {
                v.parse::<u32>()
                    .map_err(|_| format!("parameter line {}: {key}={v} is not a number", n + 2))
            };
            match key {
                "id" => s.id = value.to_owned(),
                "vmm" => {
                    s.vmm = VmmKind::from_word(value)
                        .ok_or_else(|| format!("parameter line {}: unknown VMM '{value}'", n + 2))?
                }
                "guest" => s.guest = value.to_owned(),
                "arg" => s.arg = Some(value.to_owned()),
                "vcpus" => s.vcpus = number(value)?,
                "mem" => s.mem = value.to_owned(),
                "timeout" => s.timeout_secs = number(value)?,
                "input" => s.input = Some(value.to_owned()),
                "cmdline" => s.extra_cmdline.push(value.to_owned()),
                "vmm-arg" => s.vmm_args.push(value.to_owned()),
                "fresh-dir" => s.fresh_dirs.push(value.to_owned()),
                "made-dir" => s.made_dirs.push(value.to_owned()),
                "user" => {
                    let (uid, gid) = value.split_once(':').ok_or_else(|| {
                        format!("parameter line {}: user={value} is not UID:GID", n + 2)
                    })?;
                    s.user = Some((number(uid)?, number(gid)?));
                }
                _ => return Err(format!("parameter line {}: unknown field '{key}'", n + 2)),
            }
        }
        s.validate().map_err(|e| e.to_string())?;
        out.push(s);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn params_round_trip_keeps_run_fields() {
        let batch = vec![
            Scenario::new("exit-42", "exit").arg("42").expect_code(42),
            Scenario::new("echo", "echo")
                .input("hello there")
                .vmm_arg("--share")
                .vmm_arg("tag=s0,dir=/share/g")
                .fresh_dir("/share/g")
                .made_dir("/share/kept")
                .cmdline("fsr.share=s0:/mnt"),
        ];

        let text = encode_params(&batch).unwrap();
        let back = decode_params(&text).unwrap();

        assert_eq!(back.len(), 2);
        assert_eq!(back[0].arg.as_deref(), Some("42"));
        assert_eq!(back[1].input.as_deref(), Some("hello there"));
        assert_eq!(back[1].vmm_args, batch[1].vmm_args);
        assert_eq!(back[1].extra_cmdline, batch[1].extra_cmdline);
        assert_eq!(back[1].fresh_dirs, ["/share/g"]);
        assert_eq!(back[1].made_dirs, ["/share/kept"]);
        assert_eq!(back[0].vmm, VmmKind::Ours);
        assert_eq!((back[0].user, back[1].user), (None, None));

        let as_nobody = [Scenario::new("n", "exit").as_user(65534, 65534)];
        let back = decode_params(&encode_params(&as_nobody).unwrap()).unwrap();
        assert_eq!(back[0].user, Some((65534, 65534)));
        assert!(decode_params(&format!(
            "{PARAMS_MAGIC}\nscenario\tid=n\tguest=exit\tuser=7"
        ))
        .unwrap_err()
        .contains("UID:GID"));
    }

    #[test]
    fn the_peers_boot_the_same_guest_with_the_same_command_line() {
        let ours = Scenario::new("x", "exit").arg("3");
        let line = ours.guest_cmdline();
        for kind in VmmKind::ALL {
            let s = ours.clone().vmm(kind);
            let back = decode_params(&encode_params(std::slice::from_ref(&s)).unwrap()).unwrap();
            assert_eq!(back[0].vmm, kind);
            let argv = s.vmm_argv("/k", "/i");
            assert!(argv.contains(&line), "{kind:?}: {argv:?}");
            assert!(argv.iter().any(|a| a == "/k") && argv.iter().any(|a| a == "/i"));
            assert!(argv.iter().any(|a| a == "128M"));
        }
        let floor = ours.clone().vmm(VmmKind::Floor).vmm_argv("/k", "/i");
        assert_eq!(floor, ours.vmm_argv("/k", "/i")[1..]);
        assert_eq!(VmmKind::QemuMicrovm.exit_status(3), 7);
        assert_eq!(VmmKind::Floor.exit_status(3), 3);
    }

    #[test]
    fn the_peers_refuse_what_only_ours_can_do() {
        let with_arg = Scenario::new("a", "exit")
            .vmm(VmmKind::QemuMicrovm)
            .vmm_arg("--share");
        let two_cpus = Scenario::new("b", "exit").vmm(VmmKind::Floor).vcpus(2);
        let qemu_as_nobody = Scenario::new("c", "exit")
            .vmm(VmmKind::QemuMicrovm)
            .as_user(65534, 65534);

        assert!(with_arg
            .validate()
            .unwrap_err()
            .reason
            .contains("takes none"));
        assert!(two_cpus.validate().unwrap_err().reason.contains("one vCPU"));
        assert!(qemu_as_nobody
            .validate()
            .unwrap_err()
            .reason
            .contains("runs as root"));
    }

    #[test]
    fn encode_refuses_duplicate_ids_and_spaces_in_args() {
        let dup = vec![Scenario::new("a", "exit"), Scenario::new("a", "exit")];
        let spaced = vec![Scenario::new("a", "exit").arg("4 2")];
        let escaping = vec![Scenario::new("a", "exit").fresh_dir("/share/../etc")];

        assert!(encode_params(&dup).unwrap_err().reason.contains("twice"));
        assert!(encode_params(&escaping)
            .unwrap_err()
            .reason
            .contains("under /share/"));
        assert!(encode_params(&spaced)
            .unwrap_err()
            .reason
            .contains("one word"));
    }

    #[test]
    fn guest_cmdline_follows_the_protocol() {
        let s = Scenario::new("x", "cpus").arg("2").vcpus(2);

        assert_eq!(
            s.guest_cmdline(),
            "console=ttyS0 reboot=k panic=-1 quiet i8042.noaux fsr.scenario=cpus fsr.arg=2"
        );
        assert_eq!(
            s.vmm_argv("/k", "/i")[..8],
            ["run", "--kernel", "/k", "--initrd", "/i", "--mem", "128M", "--vcpus"]
        );
    }
}
