//! Mode words, compilation of every role, the trap message. That the filters bite is
//! `devices/tests/seccomp.rs`, in child processes.

use super::*;

#[test]
fn modes_parse_from_their_words_and_unknown_ones_are_named() {
    for mode in SeccompMode::ALL {
        assert_eq!(mode.word().parse::<SeccompMode>(), Ok(mode));
    }
    let err = "strict".parse::<SeccompMode>().unwrap_err();
    assert!(err.contains("\"strict\"") && err.contains("kill, log, trap or none"));
    assert_eq!(SeccompMode::default(), SeccompMode::Kill);
}

#[test]
fn every_role_compiles_in_every_filtering_mode() {
    for role in [
        ThreadRole::Vcpu,
        ThreadRole::EventLoop,
        ThreadRole::FsWorker,
        ThreadRole::VhostUserServer,
    ] {
        for mode in [SeccompMode::Kill, SeccompMode::Log, SeccompMode::Trap] {
            assert!(filter(role, mode).unwrap().is_some());
        }
        assert!(filter(role, SeccompMode::None).unwrap().is_none());
    }
}

#[test]
fn the_trap_message_names_unknown_and_negative_numbers() {
    let mut out = MessageBuffer::new();
    trap_message(&mut out, -7, [0, 0x5401, u64::MAX], None);
    let text = String::from_utf8_lossy(out.bytes()).into_owned();
    assert!(
        text.starts_with(
            "seccomp: a filtered thread made system call unknown (-7, arguments 0x0 0x5401 \
             0xffffffffffffffff)"
        ),
        "{text}"
    );
    assert!(text.ends_with('\n'));
}
