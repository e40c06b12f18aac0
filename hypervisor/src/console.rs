//! The console input pump: host standard input to the guest's UART.
//!
//! Bytes flow through the escape filter (Ctrl-A then `x` ends the VM when
//! the input is a terminal) into a bounded queue, and from the queue into
//! the UART's receive FIFO as fast as the guest drains it. While the queue
//! is non-empty we stop reading stdin, so a fast producer cannot grow our
//! memory; at EOF we stop watching stdin and the VM keeps running.

use std::collections::VecDeque;
use std::io::Write;
use std::os::fd::RawFd;
use std::sync::{Arc, Mutex};

use devices::legacy::SerialPort;
use devices::{ExitReason, VmExitRequest};
use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};
use log::{debug, warn};
use vmm_sys_util::eventfd::EventFd;

/// Ctrl-A: the escape prefix.
pub const ESCAPE_PREFIX: u8 = 0x01;
/// After the prefix: end the VM.
pub const ESCAPE_QUIT: u8 = b'x';
/// Most bytes read from stdin at once (and queued at most).
const READ_CHUNK: usize = 4096;

/// Something that takes console input, possibly only part of it.
pub trait InputSink: Send {
    /// Accepts a prefix of `bytes`; returns its length.
    fn accept(&mut self, bytes: &[u8]) -> usize;
}

impl<W: Write + Send> InputSink for SerialPort<W> {
    fn accept(&mut self, bytes: &[u8]) -> usize {
        self.enqueue_input(bytes)
    }
}

/// The escape-sequence state machine (like QEMU's Ctrl-A prefix).
#[derive(Debug, Default)]
pub struct EscapeFilter {
    after_prefix: bool,
}

impl EscapeFilter {
    /// Passes `input` through to `out`; returns true when the quit sequence
    /// was typed (bytes after it are dropped). Ctrl-A Ctrl-A sends one Ctrl-A;
    /// Ctrl-A followed by anything else sends both bytes.
    pub fn filter(&mut self, input: &[u8], out: &mut VecDeque<u8>) -> bool {
        for &byte in input {
            if self.after_prefix {
                self.after_prefix = false;
                match byte {
                    ESCAPE_QUIT => return true,
                    ESCAPE_PREFIX => out.push_back(ESCAPE_PREFIX),
                    other => out.extend([ESCAPE_PREFIX, other]),
                }
            } else if byte == ESCAPE_PREFIX {
                self.after_prefix = true;
            } else {
                out.push_back(byte);
            }
        }
        false
    }
}

/// Event-loop subscriber that moves stdin into the guest console.
pub struct ConsoleInput<S: InputSink> {
    input_fd: RawFd,
    sink: Arc<Mutex<S>>,
    input_space: EventFd,
    exit: VmExitRequest,
    /// None when input is passed through untouched (not a terminal).
    escape: Option<EscapeFilter>,
    pending: VecDeque<u8>,
    input_open: bool,
    watching_input: bool,
}

impl<S: InputSink> ConsoleInput<S> {
    /// Creates the pump. `input_space` is written by the UART when the
    /// guest empties its FIFO; `escape` enables the Ctrl-A x sequence.
    pub fn new(
        input_fd: RawFd,
        sink: Arc<Mutex<S>>,
        input_space: EventFd,
        exit: VmExitRequest,
        escape: bool,
    ) -> Self {
        Self {
            input_fd,
            sink,
            input_space,
            exit,
            escape: escape.then(EscapeFilter::default),
            pending: VecDeque::new(),
            input_open: true,
            watching_input: false,
        }
    }

    /// Moves as much of the queue into the sink as it takes.
    fn flush(&mut self) {
        let mut sink = self.sink.lock().unwrap_or_else(|p| p.into_inner());
        while !self.pending.is_empty() {
            let (front, _) = self.pending.as_slices();
            let taken = sink.accept(front);
            if taken == 0 {
                break;
            }
            self.pending.drain(..taken);
        }
    }

    fn read_input(&mut self) -> Option<Vec<u8>> {
        let mut buf = vec![0u8; READ_CHUNK];
        // SAFETY: buf is valid for READ_CHUNK bytes; read writes at most that.
        let n = unsafe { libc::read(self.input_fd, buf.as_mut_ptr().cast(), buf.len()) };
        match n {
            0 => None,
            n if n > 0 => {
                buf.truncate(n as usize);
                Some(buf)
            }
            _ => {
                let err = std::io::Error::last_os_error();
                match err.kind() {
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::Interrupted => {
                        Some(Vec::new())
                    }
                    _ => {
                        warn!("console: reading standard input failed ({err}); input is closed");
                        None
                    }
                }
            }
        }
    }

    fn set_watching_input(&mut self, ops: &mut EventOps, watch: bool) {
        if watch == self.watching_input || !self.input_open {
            return;
        }
        let events = Events::new_raw(self.input_fd, EventSet::IN);
        let result = if watch {
            ops.add(events)
        } else {
            ops.remove(events)
        };
        match result {
            Ok(()) => self.watching_input = watch,
            Err(err) => {
                // epoll refuses regular files and /dev/null: no live input.
                debug!("console: standard input cannot be watched ({err:?}); input is off");
                self.input_open = false;
            }
        }
    }

    fn on_input(&mut self, ops: &mut EventOps) {
        match self.read_input() {
            None => {
                debug!("console: standard input closed; the VM keeps running");
                self.set_watching_input(ops, false);
                self.input_open = false;
            }
            Some(bytes) => {
                let quit = match &mut self.escape {
                    Some(filter) => filter.filter(&bytes, &mut self.pending),
                    None => {
                        self.pending.extend(bytes);
                        false
                    }
                };
                if quit {
                    self.exit.request(ExitReason::UserEscape);
                    return;
                }
                self.flush();
                if !self.pending.is_empty() {
                    // Back-pressure: wait for the guest to drain the FIFO.
                    self.set_watching_input(ops, false);
                }
            }
        }
    }

    fn on_input_space(&mut self, ops: &mut EventOps) {
        let _ = self.input_space.read();
        self.flush();
        if self.pending.is_empty() {
            self.set_watching_input(ops, true);
        }
    }
}

impl<S: InputSink> MutEventSubscriber for ConsoleInput<S> {
    fn init(&mut self, ops: &mut EventOps) {
        if let Err(err) = ops.add(Events::new(&self.input_space, EventSet::IN)) {
            warn!("console: cannot watch the UART's input-space event ({err:?}); input is off");
            self.input_open = false;
            return;
        }
        self.set_watching_input(ops, true);
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        if events.fd() == self.input_fd {
            self.on_input(ops);
        } else {
            self.on_input_space(ops);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn filter(input: &[u8]) -> (Vec<u8>, bool) {
        let mut out = VecDeque::new();
        let quit = EscapeFilter::default().filter(input, &mut out);
        (out.into_iter().collect(), quit)
    }

    #[test]
    fn ordinary_bytes_and_ctrl_c_pass_through() {
        assert_eq!(filter(b"ls\x03\r"), (b"ls\x03\r".to_vec(), false));
    }

    #[test]
    fn ctrl_a_x_quits_and_drops_the_rest() {
        assert_eq!(filter(b"ab\x01xcd"), (b"ab".to_vec(), true));
    }

    #[test]
    fn double_ctrl_a_sends_one() {
        assert_eq!(filter(b"\x01\x01z"), (b"\x01z".to_vec(), false));
    }

    #[test]
    fn ctrl_a_then_other_sends_both() {
        assert_eq!(filter(b"\x01c"), (b"\x01c".to_vec(), false));
    }

    #[test]
    fn prefix_split_across_reads_still_quits() {
        let mut escape = EscapeFilter::default();
        let mut out = VecDeque::new();

        assert!(!escape.filter(b"\x01", &mut out));
        assert!(escape.filter(b"x", &mut out));
        assert!(out.is_empty());
    }

    /// Takes at most `room` bytes, like a UART FIFO.
    struct Fifo {
        room: usize,
        got: Vec<u8>,
    }

    impl InputSink for Fifo {
        fn accept(&mut self, bytes: &[u8]) -> usize {
            let n = bytes.len().min(self.room);
            self.room -= n;
            self.got.extend_from_slice(&bytes[..n]);
            n
        }
    }

    #[test]
    fn flush_stops_when_the_sink_is_full_and_resumes_later() {
        let sink = Arc::new(Mutex::new(Fifo {
            room: 3,
            got: vec![],
        }));
        let exit = VmExitRequest::new().unwrap();
        let space = EventFd::new(0).unwrap();
        let mut pump = ConsoleInput::new(-1, sink.clone(), space, exit, false);
        pump.pending.extend(b"hello");

        pump.flush();
        assert_eq!(pump.pending.len(), 2);
        sink.lock().unwrap().room = 10;
        pump.flush();

        assert!(pump.pending.is_empty());
        assert_eq!(sink.lock().unwrap().got, b"hello");
    }
}
