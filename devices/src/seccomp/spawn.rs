//! Starting a thread that confines itself before it does anything else, and hearing whether
//! it could: the start of every filtered thread the VMM and the back-end make.

use std::fmt;
use std::sync::mpsc;
use std::thread::JoinHandle;

/// Why a confined thread is not running.
#[derive(Debug)]
pub enum SpawnError<E> {
    /// The thread could not be started.
    Spawn(std::io::Error),
    /// It started, but could not confine itself; it has ended.
    Confine(E),
    /// It ended before saying whether it was confined (it panicked).
    EndedAtStart,
}

impl<E: fmt::Display> fmt::Display for SpawnError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SpawnError::Spawn(err) => write!(f, "cannot start the thread: {err}"),
            SpawnError::Confine(err) => err.fmt(f),
            SpawnError::EndedAtStart => f.write_str("the thread ended at its start"),
        }
    }
}

/// Starts a thread named `name` that runs `confine`, then `body` only if `confine`
/// succeeded. Returns once `confine` has run: with the running thread, or with why it is not
/// running (the thread then is joined).
pub fn spawn_confined<E: Send + 'static>(
    name: String,
    confine: impl FnOnce() -> Result<(), E> + Send + 'static,
    body: impl FnOnce() + Send + 'static,
) -> Result<JoinHandle<()>, SpawnError<E>> {
    let (report, outcome) = mpsc::channel();
    let thread = std::thread::Builder::new()
        .name(name)
        .spawn(move || {
            let confined = confine();
            let ok = confined.is_ok();
            let _ = report.send(confined);
            if ok {
                body();
            }
        })
        .map_err(SpawnError::Spawn)?;
    match outcome.recv() {
        Ok(Ok(())) => Ok(thread),
        Ok(Err(err)) => {
            let _ = thread.join();
            Err(SpawnError::Confine(err))
        }
        Err(_) => {
            let _ = thread.join();
            Err(SpawnError::EndedAtStart)
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    use super::*;

    #[test]
    fn the_body_runs_only_after_a_successful_confinement() {
        let ran = Arc::new(AtomicBool::new(false));
        let seen = ran.clone();
        let thread = spawn_confined(
            "ok".into(),
            || Ok::<(), String>(()),
            move || seen.store(true, Ordering::SeqCst),
        )
        .unwrap();
        thread.join().unwrap();
        assert!(ran.load(Ordering::SeqCst));

        let ran = Arc::new(AtomicBool::new(false));
        let seen = ran.clone();
        let err = spawn_confined(
            "refused".into(),
            || Err("no filter".to_owned()),
            move || seen.store(true, Ordering::SeqCst),
        )
        .unwrap_err();
        assert!(matches!(err, SpawnError::Confine(ref e) if e == "no filter"));
        assert!(!ran.load(Ordering::SeqCst));
    }

    #[test]
    fn a_thread_that_panics_while_confining_is_reported() {
        let err = spawn_confined(
            "panics".into(),
            || -> Result<(), String> { panic!("boom") },
            || {},
        )
        .unwrap_err();
        assert!(matches!(err, SpawnError::EndedAtStart));
    }
}
