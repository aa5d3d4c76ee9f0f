//! The access log: one JSON line per request or tunnel.
//!
//! Request handlers never wait on log I/O. `log` serializes the record into its own buffer on the
//! calling thread and offers it to a dedicated writer thread over a bounded channel; if the
//! writer has fallen behind and the channel is full, the line is dropped and
//! `tollgate_access_log_dropped_total` counts it. The writer batches whatever is queued into one
//! buffered write. Call [`AccessLog::flush`] at shutdown: lines still queued when the process
//! exits are lost.

mod record;

use std::fmt;
use std::fs::OpenOptions;
use std::io::{self, BufWriter, Write};
use std::sync::Arc;
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};

use prometheus_client::metrics::counter::Counter;

use crate::metrics::Metrics;
pub use record::AccessRecord;

/// Lines that may wait for the writer before new ones are dropped (a few MiB at most).
pub const DEFAULT_CAPACITY: usize = 8192;

/// Initial size of a line buffer; typical lines fit without growing.
const LINE_CAPACITY: usize = 512;

/// Output buffer of the writer thread; a full queue becomes a few large writes.
const WRITE_BUFFER: usize = 64 * 1024;

enum Message {
    Line(Vec<u8>),
    /// Flush everything before this message, then acknowledge.
    Flush(SyncSender<()>),
}

struct Shared {
    tx: SyncSender<Message>,
    dropped: Counter,
}

/// Handle to the access log; clones share one writer thread. Dropping the last clone lets the
/// writer finish the queue and exit.
#[derive(Clone)]
pub struct AccessLog {
    /// `None` when logging is off.
    shared: Option<Arc<Shared>>,
}

impl fmt::Debug for AccessLog {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AccessLog")
            .field("enabled", &self.shared.is_some())
            .finish()
    }
}

impl AccessLog {
    /// Opens `dest`: `stdout`, `stderr`, `off`, or a file path (created if missing, appended
    /// to). `metrics` may be `&Metrics`, `Arc<Metrics>` or `&Arc<Metrics>`.
    pub fn open(dest: &str, metrics: impl AsRef<Metrics>) -> io::Result<AccessLog> {
        Self::with_capacity(dest, metrics, DEFAULT_CAPACITY)
    }

    /// Like [`AccessLog::open`] with a chosen queue length (at least 1).
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
        let (tx, rx) = mpsc::sync_channel(capacity.max(1));
        std::thread::Builder::new()
            .name("tollgate-access-log".to_owned())
            .spawn(move || run_writer(rx, out))?;
        Ok(AccessLog {
            shared: Some(Arc::new(Shared {
                tx,
                dropped: metrics.as_ref().access_log_dropped_counter(),
            })),
        })
    }

    /// A log that discards everything without doing any work.
    pub fn disabled() -> AccessLog {
        AccessLog { shared: None }
    }

    pub fn is_enabled(&self) -> bool {
        self.shared.is_some()
    }

    /// Queues one line; never blocks on I/O.
    pub fn log(&self, r: &AccessRecord<'_>) {
        let Some(shared) = &self.shared else {
            return;
        };
        let mut line = Vec::with_capacity(LINE_CAPACITY);
        if record::write_line(&mut line, r).is_err() {
            // Serializing these field types into memory cannot fail; count it if it ever does.
            shared.dropped.inc();
            return;
        }
        match shared.tx.try_send(Message::Line(line)) {
            Ok(()) => {}
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                shared.dropped.inc();
            }
        }
    }

    /// Blocks until every line queued before this call has been written to the destination.
    pub fn flush(&self) {
        let Some(shared) = &self.shared else {
            return;
        };
        let (ack_tx, ack_rx) = mpsc::sync_channel(1);
        // A blocking send: flushing is for shutdown and tests, where waiting is the point.
        if shared.tx.send(Message::Flush(ack_tx)).is_ok() {
            // An error means the writer thread is gone; nothing more can be written anyway.
            let _ = ack_rx.recv();
        }
    }
}

fn run_writer(rx: Receiver<Message>, out: Box<dyn Write + Send>) {
    let mut out = BufWriter::with_capacity(WRITE_BUFFER, out);
    let mut failing = false;
    while let Ok(first) = rx.recv() {
        let mut next = Some(first);
        // Take everything already queued before paying for a write system call.
        while let Some(message) = next {
            match message {
                Message::Line(line) => {
                    let result = out.write_all(&line);
                    note_result(&mut failing, result);
                }
                Message::Flush(ack) => {
                    note_result(&mut failing, out.flush());
                    let _ = ack.send(());
                }
            }
            next = rx.try_recv().ok();
        }
        note_result(&mut failing, out.flush());
    }
    note_result(&mut failing, out.flush());
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
