//! Detects HTTP/1 requests that carry both `Content-Length` and
//! `Transfer-Encoding`. hyper's parser resolves that conflict as RFC 9112
//! allows (chunked wins, the length is dropped, the connection closes after
//! the response), but by the time the request reaches the handler the
//! `Content-Length` is gone, and Tollgate's contract is to refuse such
//! messages with 400 `ambiguous_framing` rather than guess.
//!
//! [`Sniffer`] wraps the client socket and follows the HTTP/1 message
//! boundaries in the bytes hyper reads (request heads, `Content-Length`
//! bodies, chunked bodies), recording which request (by position on the
//! connection) had both headers. It never buffers or changes the bytes. It
//! gives up — and leaves framing to hyper alone — after a CONNECT, on the
//! HTTP/2 preface, or on anything it does not understand; hyper rejects
//! malformed framing itself and closes the connection.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Which requests on one connection had ambiguous framing.
#[derive(Debug, Default)]
pub struct Verdicts {
    any: AtomicBool,
    flagged: Mutex<Vec<u64>>,
    served: AtomicU64,
}

impl Verdicts {
    fn flag(&self, ordinal: u64) {
        if let Ok(mut f) = self.flagged.lock() {
            f.push(ordinal);
            self.any.store(true, Ordering::Release);
        }
    }

    /// Called once per request the handler receives, in order; true when
    /// that request had both `Content-Length` and `Transfer-Encoding`.
    pub fn next_is_ambiguous(&self) -> bool {
        let ordinal = self.served.fetch_add(1, Ordering::AcqRel);
        if !self.any.load(Ordering::Acquire) {
            return false;
        }
        self.flagged
            .lock()
            .map(|f| f.contains(&ordinal))
            .unwrap_or(false)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Header {
    Other,
    ContentLength,
    TransferEncoding,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Start of a request line (empty lines before it are skipped).
    LineStart,
    /// Inside the request line; `pos` bytes seen.
    RequestLine {
        pos: usize,
        connect: bool,
        h2: bool,
    },
    /// Start of a header line (or the empty line ending the head).
    HeaderStart,
    HeaderName,
    HeaderValue(Header),
    /// Saw CR of the empty line ending the head.
    HeadEnd,
    Body(u64),
    ChunkSize {
        digits: usize,
    },
    ChunkExt,
    ChunkData(u64),
    ChunkDataCr,
    ChunkDataLf,
    TrailerStart,
    TrailerLine,
    TrailerEnd,
    /// Stopped following (tunnel, HTTP/2, or something unexpected).
    Off,
}

const MAX_NAME: usize = 20;

/// The framing follower (pure logic; see [`Sniffer`] for the I/O side).
#[derive(Debug)]
pub struct Tracker {
    state: State,
    name: [u8; MAX_NAME],
    name_len: usize,
    saw_cl: bool,
    saw_te: bool,
    content_length: Option<u64>,
    chunk: u64,
    ordinal: u64,
    verdicts: Arc<Verdicts>,
}

const PREFIX_CONNECT: &[u8] = b"CONNECT ";
const PREFIX_H2: &[u8] = b"PRI * HTTP/2.0";

impl Tracker {
    pub fn new(verdicts: Arc<Verdicts>) -> Self {
        Self {
            state: State::LineStart,
            name: [0; MAX_NAME],
            name_len: 0,
            saw_cl: false,
            saw_te: false,
            content_length: None,
            chunk: 0,
            ordinal: 0,
            verdicts,
        }
    }

    /// Feeds bytes read from the client.
    pub fn feed(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            match self.state {
                State::Off => return,
                State::Body(n) => {
                    let take = (data.len() as u64).min(n);
                    data = &data[take as usize..];
                    self.state = if n == take {
                        State::LineStart
                    } else {
                        State::Body(n - take)
                    };
                }
                State::ChunkData(n) => {
                    let take = (data.len() as u64).min(n);
                    data = &data[take as usize..];
                    self.state = if n == take {
                        State::ChunkDataCr
                    } else {
                        State::ChunkData(n - take)
                    };
                }
                _ => {
                    self.byte(data[0]);
                    data = &data[1..];
                }
            }
        }
    }

    fn end_head(&mut self) {
        if self.saw_cl && self.saw_te {
            self.verdicts.flag(self.ordinal);
        }
        self.ordinal += 1;
        self.state = if self.saw_te {
            State::ChunkSize { digits: 0 }
        } else {
            match self.content_length {
                Some(0) | None => State::LineStart,
                Some(n) => State::Body(n),
            }
        };
    }

    fn byte(&mut self, b: u8) {
        use State::*;
        self.state = match self.state {
            LineStart => match b {
                b'\r' | b'\n' => LineStart,
                _ => {
                    self.saw_cl = false;
                    self.saw_te = false;
                    self.content_length = None;
                    RequestLine {
                        pos: 1,
                        connect: b == PREFIX_CONNECT[0],
                        h2: b == PREFIX_H2[0],
                    }
                }
            },
            RequestLine { pos, connect, h2 } => {
                if b == b'\n' {
                    if connect || h2 { Off } else { HeaderStart }
                } else {
                    let connect =
                        connect && (pos >= PREFIX_CONNECT.len() || PREFIX_CONNECT[pos] == b);
                    let h2 = h2 && (pos >= PREFIX_H2.len() || PREFIX_H2[pos] == b);
                    RequestLine {
                        pos: pos.saturating_add(1),
                        connect,
                        h2,
                    }
                }
            }
            HeaderStart => match b {
                b'\r' => HeadEnd,
                b'\n' => {
                    self.end_head();
                    self.state
                }
                b' ' | b'\t' => Off, // obsolete line folding: hyper refuses it
                _ => {
                    self.name_len = 0;
                    self.push_name(b);
                    HeaderName
                }
            },
            HeaderName => match b {
                b':' => {
                    let name = &self.name[..self.name_len];
                    let h = if name == b"content-length" {
                        self.saw_cl = true;
                        Header::ContentLength
                    } else if name == b"transfer-encoding" {
                        self.saw_te = true;
                        Header::TransferEncoding
                    } else {
                        Header::Other
                    };
                    HeaderValue(h)
                }
                b'\n' => Off,
                _ => {
                    self.push_name(b);
                    HeaderName
                }
            },
            HeaderValue(h) => match b {
                b'\n' => HeaderStart,
                b'0'..=b'9' if h == Header::ContentLength => {
                    let d = u64::from(b - b'0');
                    // Only the first value counts; hyper rejects differing ones.
                    let cur = self.content_length.unwrap_or(0);
                    match cur.checked_mul(10).and_then(|v| v.checked_add(d)) {
                        Some(v) => {
                            self.content_length = Some(v);
                            HeaderValue(h)
                        }
                        None => Off,
                    }
                }
                b',' if h == Header::ContentLength => HeaderValue(Header::Other),
                _ => HeaderValue(h),
            },
            HeadEnd => {
                if b == b'\n' {
                    self.end_head();
                    self.state
                } else {
                    Off
                }
            }
            ChunkSize { digits } => match b {
                b'0'..=b'9' | b'a'..=b'f' | b'A'..=b'F' if digits < 16 => {
                    let d = u64::from((b as char).to_digit(16).unwrap_or(0));
                    self.chunk = if digits == 0 {
                        d
                    } else {
                        (self.chunk << 4) | d
                    };
                    ChunkSize { digits: digits + 1 }
                }
                b';' | b' ' | b'\t' | b'\r' if digits > 0 => ChunkExt,
                b'\n' if digits > 0 => self.after_size(),
                _ => Off,
            },
            ChunkExt => match b {
                b'\n' => self.after_size(),
                _ => ChunkExt,
            },
            ChunkData(_) | Body(_) | Off => Off, // handled in `feed`
            ChunkDataCr => match b {
                b'\r' => ChunkDataLf,
                b'\n' => ChunkSize { digits: 0 },
                _ => Off,
            },
            ChunkDataLf => match b {
                b'\n' => ChunkSize { digits: 0 },
                _ => Off,
            },
            TrailerStart => match b {
                b'\r' => TrailerEnd,
                b'\n' => LineStart,
                _ => TrailerLine,
            },
            TrailerLine => match b {
                b'\n' => TrailerStart,
                _ => TrailerLine,
            },
            TrailerEnd => match b {
                b'\n' => LineStart,
                _ => Off,
            },
        };
    }

    fn after_size(&mut self) -> State {
        if self.chunk == 0 {
            State::TrailerStart
        } else {
            State::ChunkData(self.chunk)
        }
    }

    fn push_name(&mut self, b: u8) {
        if self.name_len < MAX_NAME {
            self.name[self.name_len] = b.to_ascii_lowercase();
            self.name_len += 1;
        } else {
            // Longer than any name we care about: make it match nothing.
            self.name[0] = 0;
        }
    }
}

/// The client socket, with a [`Tracker`] watching what hyper reads.
pub struct Sniffer<S> {
    inner: S,
    tracker: Tracker,
}

impl<S> Sniffer<S> {
    pub fn new(inner: S) -> (Self, Arc<Verdicts>) {
        let verdicts = Arc::new(Verdicts::default());
        (
            Self {
                inner,
                tracker: Tracker::new(verdicts.clone()),
            },
            verdicts,
        )
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Sniffer<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let res = Pin::new(&mut this.inner).poll_read(cx, buf);
        if this.tracker.state != State::Off {
            this.tracker.feed(&buf.filled()[before..]);
        }
        res
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Sniffer<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(chunks: &[&[u8]]) -> (Vec<bool>, State) {
        let v = Arc::new(Verdicts::default());
        let mut t = Tracker::new(v.clone());
        for c in chunks {
            t.feed(c);
        }
        let out = (0..t.ordinal).map(|_| v.next_is_ambiguous()).collect();
        (out, t.state)
    }

    #[test]
    fn flags_cl_with_te_in_either_order() {
        let (v, _) = run(&[b"POST /a HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"]);
        assert_eq!(v, [true]);
        let (v, _) = run(&[
            b"POST /a HTTP/1.1\r\ntransfer-encoding: chunked\r\ncontent-length: 3\r\n\r\n0\r\n\r\n",
        ]);
        assert_eq!(v, [true]);
    }

    #[test]
    fn follows_bodies_across_requests_and_reads() {
        let stream: &[u8] = b"POST /a HTTP/1.1\r\nContent-Length: 5\r\n\r\nhelloPOST /b HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\n0\r\nX-Trailer: 1\r\n\r\nGET /c HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n";
        // Every split point gives the same answer.
        for split in 0..stream.len() {
            let (v, state) = run(&[&stream[..split], &stream[split..]]);
            assert_eq!(v, [false, false, true], "split at {split}");
            assert_eq!(state, State::LineStart);
        }
    }

    #[test]
    fn stops_after_connect_and_h2() {
        let (v, state) = run(&[b"CONNECT a:443 HTTP/1.1\r\nHost: a\r\n\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n"]);
        assert_eq!((v.len(), state), (0, State::Off));
        let (_, state) = run(&[b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"]);
        assert_eq!(state, State::Off);
        let (v, _) = run(&[b"CONNECTX /a HTTP/1.1\r\nContent-Length: 0\r\n\r\n"]);
        assert_eq!(v, [false]);
    }
}
