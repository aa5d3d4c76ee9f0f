//! The durable on-disk queue of usage batches (`<state-dir>/usage/`), so usage survives a
//! control-plane outage and a gateway crash.
//!
//! - **Segments**: one file per batch, `<seq, 20 digits>.batch`, written to a temporary file,
//!   fsynced, renamed into place and the directory fsynced ([`super::store::write_atomic`]): a
//!   crash leaves either the whole segment or none (stray temporaries are removed at open).
//! - **Sequence numbers** come from `next-seq`, which is advanced (durably) *before* the segment
//!   is written, so a number is never used twice, even after every segment was acknowledged
//!   and deleted; a crash between the two leaves a harmless gap. The control plane stores
//!   (gateway, seq) with the rows in one transaction, so a segment sent again is counted once.
//! - **Order**: segments are uploaded oldest first and deleted only after the control plane
//!   acknowledged them.
//! - **Bound**: when the segments exceed `max_bytes`, the oldest are deleted (never the newest
//!   one) and counted in `tollgate_usage_buffer_evicted_total`; `tollgate_usage_buffer_bytes`
//!   shows the current size.
//!
//! All methods do blocking file I/O: call them from a blocking context (`spawn_blocking`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use tollgate_telemetry::Metrics;

use super::store::write_atomic;

const SEQ_FILE: &str = "next-seq";
const SUFFIX: &str = ".batch";

#[derive(Debug)]
struct Inner {
    next_seq: u64,
    /// seq → file size.
    segments: BTreeMap<u64, u64>,
    bytes: u64,
}

/// See the module docs.
pub struct Buffer {
    dir: PathBuf,
    max_bytes: u64,
    metrics: Arc<Metrics>,
    inner: Mutex<Inner>,
}

impl std::fmt::Debug for Buffer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Buffer")
            .field("dir", &self.dir)
            .field("max_bytes", &self.max_bytes)
            .finish_non_exhaustive()
    }
}

fn segment_name(seq: u64) -> String {
    format!("{seq:020}{SUFFIX}")
}

/// What [`Buffer::push`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pushed {
    pub seq: u64,
    /// Oldest segments deleted to stay within the bound.
    pub evicted: u64,
}

impl Buffer {
    /// Opens (creating) the buffer directory and indexes the segments already there.
    pub fn open(dir: &Path, max_bytes: u64, metrics: Arc<Metrics>) -> std::io::Result<Buffer> {
        std::fs::create_dir_all(dir)?;
        let mut segments = BTreeMap::new();
        let mut bytes = 0;
        for entry in std::fs::read_dir(dir)? {
            let entry = entry?;
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if name.starts_with('.') && name.contains(".tmp.") {
                // An interrupted write: the segment was never complete, nor acknowledged.
                let _ = std::fs::remove_file(entry.path());
                continue;
            }
            let Some(seq) = name
                .strip_suffix(SUFFIX)
                .and_then(|s| s.parse::<u64>().ok())
            else {
                continue;
            };
            let len = entry.metadata()?.len();
            segments.insert(seq, len);
            bytes += len;
        }
        let stored: u64 = std::fs::read_to_string(dir.join(SEQ_FILE))
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(1);
        let after_segments = segments.keys().next_back().map_or(1, |s| s + 1);
        let next_seq = stored.max(after_segments).max(1);
        let b = Buffer {
            dir: dir.to_owned(),
            max_bytes,
            metrics,
            inner: Mutex::new(Inner {
                next_seq,
                segments,
                bytes,
            }),
        };
        b.publish_gauges(&b.lock());
        Ok(b)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn publish_gauges(&self, inner: &Inner) {
        self.metrics
            .usage_buffer(inner.bytes, inner.segments.len() as u64);
    }

    /// Appends a batch: takes the next sequence number, durably, then writes the segment that
    /// `encode(seq)` returns. Evicts the oldest segments when the buffer is over its bound.
    pub fn push(&self, encode: impl FnOnce(u64) -> Vec<u8>) -> std::io::Result<Pushed> {
        let mut inner = self.lock();
        let seq = inner.next_seq;
        write_atomic(&self.dir.join(SEQ_FILE), (seq + 1).to_string().as_bytes())?;
        inner.next_seq = seq + 1;
        let bytes = encode(seq);
        write_atomic(&self.dir.join(segment_name(seq)), &bytes)?;
        inner.segments.insert(seq, bytes.len() as u64);
        inner.bytes += bytes.len() as u64;
        let mut evicted = 0;
        while inner.bytes > self.max_bytes && inner.segments.len() > 1 {
            let Some((&old, &len)) = inner.segments.iter().next() else {
                break;
            };
            match std::fs::remove_file(self.dir.join(segment_name(old))) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
            inner.segments.remove(&old);
            inner.bytes -= len;
            evicted += 1;
        }
        if evicted > 0 {
            self.metrics.usage_buffer_evicted(evicted);
            tracing::error!(
                usage.evicted_batches = evicted,
                usage.buffer_max_bytes = self.max_bytes,
                "usage buffer full: deleted the oldest unsent batches (the control plane has been unreachable too long)"
            );
        }
        self.publish_gauges(&inner);
        Ok(Pushed { seq, evicted })
    }

    /// The oldest buffered batch: its sequence number and bytes.
    pub fn oldest(&self) -> std::io::Result<Option<(u64, Vec<u8>)>> {
        let mut inner = self.lock();
        while let Some((&seq, &len)) = inner.segments.iter().next() {
            match std::fs::read(self.dir.join(segment_name(seq))) {
                Ok(bytes) => return Ok(Some((seq, bytes))),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    // Deleted behind our back: forget it.
                    inner.segments.remove(&seq);
                    inner.bytes -= len;
                    self.publish_gauges(&inner);
                }
                Err(e) => return Err(e),
            }
        }
        Ok(None)
    }

    /// Deletes an acknowledged batch.
    pub fn ack(&self, seq: u64) -> std::io::Result<()> {
        let mut inner = self.lock();
        match std::fs::remove_file(self.dir.join(segment_name(seq))) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        if let Some(len) = inner.segments.remove(&seq) {
            inner.bytes -= len;
        }
        self.publish_gauges(&inner);
        Ok(())
    }

    /// Buffered batches and bytes.
    pub fn size(&self) -> (u64, u64) {
        let inner = self.lock();
        (inner.segments.len() as u64, inner.bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open(dir: &Path, max: u64) -> (Buffer, Arc<Metrics>) {
        let m = Arc::new(Metrics::new());
        (Buffer::open(dir, max, Arc::clone(&m)).unwrap(), m)
    }

    #[test]
    fn batches_come_back_in_order_and_survive_reopen() {
        let tmp = tempfile::tempdir().unwrap();
        let (b, _) = open(tmp.path(), 1 << 20);
        for i in 0..3u8 {
            b.push(|seq| format!("{seq}:{i}").into_bytes()).unwrap();
        }
        drop(b);
        let (b, _) = open(tmp.path(), 1 << 20);
        assert_eq!(b.size().0, 3);
        let (seq, bytes) = b.oldest().unwrap().unwrap();
        assert_eq!((seq, bytes.as_slice()), (1, b"1:0".as_slice()));
        b.ack(1).unwrap();
        assert_eq!(b.oldest().unwrap().unwrap().0, 2);
    }

    #[test]
    fn sequence_numbers_are_never_reused() {
        let tmp = tempfile::tempdir().unwrap();
        let (b, _) = open(tmp.path(), 1 << 20);
        let first = b.push(|_| b"x".to_vec()).unwrap().seq;
        b.ack(first).unwrap();
        drop(b);
        // Every segment is gone; the counter file still moves on.
        let (b, _) = open(tmp.path(), 1 << 20);
        assert!(b.oldest().unwrap().is_none());
        assert_eq!(b.push(|_| b"y".to_vec()).unwrap().seq, first + 1);
    }

    #[test]
    fn oldest_are_evicted_past_the_bound_and_counted() {
        let tmp = tempfile::tempdir().unwrap();
        let (b, m) = open(tmp.path(), 25);
        for _ in 0..5 {
            b.push(|_| vec![b'a'; 10]).unwrap();
        }
        // 5 × 10 bytes with a 25-byte bound: the 3 oldest went.
        assert_eq!(b.size(), (2, 20));
        assert_eq!(b.oldest().unwrap().unwrap().0, 4);
        let text = m.encode();
        assert!(
            text.contains("tollgate_usage_buffer_evicted_total 3"),
            "{text}"
        );
        assert!(text.contains("tollgate_usage_buffer_bytes 20"), "{text}");
    }

    #[test]
    fn interrupted_writes_are_cleaned_up() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::write(tmp.path().join(".00000000000000000001.batch.tmp.42"), b"x").unwrap();
        let (b, _) = open(tmp.path(), 1 << 20);
        assert_eq!(b.size(), (0, 0));
        assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 0);
    }
}
