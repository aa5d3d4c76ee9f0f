//! The access log: one JSON line per request or tunnel.
//!
//! Request handlers never wait on log I/O and never wake another thread per
//! line. `log` serializes the record on the calling thread (into a reused
//! thread-local buffer) and appends it to a shared in-memory batch under a
//! briefly held mutex. A dedicated writer thread swaps the batch out every
//! [`WRITE_INTERVAL`] (or sooner when it grows past [`WAKE_BYTES`]) and writes
//! it with one system call, so the cost per request is a memcpy, not a
//! `write(2)` plus a futex wake-up. If the writer has fallen behind by more
//! than the configured number of lines, new lines are dropped and
//! `tollgate_access_log_dropped_total` counts them. Call [`AccessLog::flush`]
//! at shutdown: lines still pending when the process exits are lost.

mod record;

use std::cell::RefCell;
use std::fmt;
use std::fs::OpenOptions;
use std::io::{self, Write};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;

use crate::metrics::Metrics;
pub use record::AccessRecord;

/// Lines that may wait for the writer before new ones are dropped (a few MiB at most).
pub const DEFAULT_CAPACITY: usize = 8192;

/// How long a line may sit in memory before the writer thread writes it out.
pub const WRITE_INTERVAL: Duration = Duration::from_millis(20);

/// A pending batch this large wakes the writer before its interval is up.
pub const WAKE_BYTES: usize = 256 * 1024;

/// Initial size of a line buffer; typical lines fit without growing.
const LINE_CAPACITY: usize = 512;

/// The batch of lines waiting for the writer.
#[derive(Default)]
struct Pending {
    buf: Vec<u8>,
    lines: usize,
    /// Lines ever appended, and lines known to be written (for `flush`).
    appended: u64,
    written: u64,
    /// Set when a flusher is waiting, so the writer does not sleep its interval.
    urgent: bool,
    /// Set when the last handle is gone: write what is left and exit.
    closed: bool,
}

struct Shared {
    pending: Mutex<Pending>,
    /// Wakes the writer early (size threshold, flush, close).
    wake: Condvar,
    /// Tells flushers that `written` advanced.
    progress: Condvar,
    capacity: usize,
    dropped: Counter,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Pending> {
        // A panic while holding this lock cannot leave the batch inconsistent
        // (it is plain bytes), so a poisoned lock is still usable.
        self.pending
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Closes the writer when the last [`AccessLog`] clone goes away.
struct Handle {
    shared: Arc<Shared>,
}

impl Drop for Handle {
    fn drop(&mut self) {
        self.shared.lock().closed = true;
        self.shared.wake.notify_one();
    }
}

/// Handle to the access log; clones share one writer thread. Dropping the last clone lets the
/// writer finish the batch and exit.
#[derive(Clone)]
pub struct AccessLog {
    /// `None` when logging is off.
    handle: Option<Arc<Handle>>,
}

impl fmt::Debug for AccessLog {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AccessLog")
            .field("enabled", &self.handle.is_some())
            .finish()
    }
}

thread_local! {
    static LINE: RefCell<Vec<u8>> = RefCell::new(Vec::with_capacity(LINE_CAPACITY));
}

impl AccessLog {
    /// Opens `dest`: `stdout`, `stderr`, `off`, or a file path (created if missing, appended
    /// to). `metrics` may be `&Metrics`, `Arc<Metrics>` or `&Arc<Metrics>`.
    pub fn open(dest: &str, metrics: impl AsRef<Metrics>) -> io::Result<AccessLog> {
        Self::with_capacity(dest, metrics, DEFAULT_CAPACITY)
    }

    /// Like [`AccessLog::open`] with a chosen bound on pending lines (at least 1).
    pub fn with_capacity(
        dest: &str,
        metrics: impl AsRef<Metrics>,
        capacity: usize,
    ) -> io::Result<AccessLog> {
        let out: Box<dyn Write + Send> = match dest {
            "off" => return Ok(AccessLog::disabled()),
            "stdout" => Box::new(io::stdout()),
            "stderr" => Box::new(io::stderr()),
            path => Box::new(OpenOptions::new().create(true).append(true).open(path)?),
        };
        Self::with_writer(out, metrics, capacity)
    }

    /// Logs to any writer (tests, embedding). The writer is used only by the writer thread.
    pub fn with_writer(
        out: Box<dyn Write + Send>,
        metrics: impl AsRef<Metrics>,
        capacity: usize,
    ) -> io::Result<AccessLog> {
        let shared = Arc::new(Shared {
            pending: Mutex::new(Pending::default()),
            wake: Condvar::new(),
            progress: Condvar::new(),
            capacity: capacity.max(1),
            dropped: metrics.as_ref().access_log_dropped_counter(),
        });
        let writer = Arc::clone(&shared);
        std::thread::Builder::new()
            .name("tollgate-access-log".to_owned())
            .spawn(move || run_writer(&writer, out))?;
        Ok(AccessLog {
            handle: Some(Arc::new(Handle { shared })),
        })
    }

    /// A log that discards everything without doing any work.
    pub fn disabled() -> AccessLog {
        AccessLog { handle: None }
    }

    pub fn is_enabled(&self) -> bool {
        self.handle.is_some()
    }

    /// Appends one line to the pending batch; never blocks on I/O.
    pub fn log(&self, r: &AccessRecord<'_>) {
        let Some(handle) = &self.handle else {
            return;
        };
        let shared = &handle.shared;
        LINE.with(|cell| {
            let Ok(mut line) = cell.try_borrow_mut() else {
                shared.dropped.inc();
                return;
            };
            line.clear();
            if record::write_line(&mut line, r).is_err() {
                // Serializing these field types into memory cannot fail; count it if it ever does.
                shared.dropped.inc();
                return;
            }
            let mut pending = shared.lock();
            if pending.lines >= shared.capacity {
                drop(pending);
                shared.dropped.inc();
                return;
            }
            pending.buf.extend_from_slice(&line);
            pending.lines += 1;
            pending.appended += 1;
            let wake = pending.buf.len() >= WAKE_BYTES;
            drop(pending);
            if wake {
                shared.wake.notify_one();
            }
        });
    }

    /// Blocks until every line logged before this call has been written to the destination
    /// (or, if the destination is stuck, for at most a few seconds).
    pub fn flush(&self) {
        let Some(handle) = &self.handle else {
            return;
        };
        let shared = &handle.shared;
        let mut pending = shared.lock();
        let target = pending.appended;
        pending.urgent = true;
        shared.wake.notify_one();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while pending.written < target {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                break;
            }
            pending = shared
                .progress
                .wait_timeout(pending, left)
                .map(|(g, _)| g)
                .unwrap_or_else(|e| e.into_inner().0);
        }
    }
}

fn run_writer(shared: &Shared, mut out: Box<dyn Write + Send>) {
    let mut failing = false;
    let mut batch = Vec::new();
    loop {
        let mut pending = shared.lock();
        if !pending.closed && !pending.urgent && pending.buf.len() < WAKE_BYTES {
            pending = shared
                .wake
                .wait_timeout(pending, WRITE_INTERVAL)
                .map(|(g, _)| g)
                .unwrap_or_else(|e| e.into_inner().0);
        }
        // Swap the batch out so loggers keep appending while this thread writes.
        std::mem::swap(&mut batch, &mut pending.buf);
        pending.lines = 0;
        pending.urgent = false;
        let upto = pending.appended;
        let closed = pending.closed;
        drop(pending);

        if !batch.is_empty() {
            let result = out.write_all(&batch).and_then(|()| out.flush());
            note_result(&mut failing, result);
            batch.clear();
        }
        shared.lock().written = upto;
        shared.progress.notify_all();
        if closed {
            return;
        }
    }
}

/// Reports the first failure of a streak and the recovery, not every failing line.
fn note_result(failing: &mut bool, result: io::Result<()>) {
    match result {
        Err(error) if !*failing => {
            *failing = true;
            tracing::error!(error = %error, "access log write failed; lines are being lost");
        }
        Ok(()) if *failing => {
            *failing = false;
            tracing::info!("access log writes recovered");
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests;
