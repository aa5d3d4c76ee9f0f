//! A tiny authoritative DNS server for tests, on `127.0.0.1:<ephemeral>` over UDP and TCP.
//!
//! It answers A/AAAA queries from a name → addresses map (NXDOMAIN for unknown names), can be
//! told to drop or SERVFAIL a name, counts queries per name, and lets a test change answers while
//! running (e.g. to play a rebinding attacker). Hand-written wire format: only what a stub
//! resolver sends is understood. Include it from an integration test with
//! `#[path = "support/dns_server.rs"] mod dns_server;` (or `pub mod dns_server;` in a
//! `support/mod.rs`). Stops when dropped.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::task::{JoinHandle, JoinSet};

/// What the server does for one name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Behaviour {
    /// Answer A queries with the IPv4 and AAAA queries with the IPv6 addresses (NODATA if none).
    Answer(Vec<IpAddr>),
    /// Never reply, so the client times out.
    Drop,
    /// Reply SERVFAIL.
    ServFail,
}

struct State {
    names: HashMap<String, Behaviour>,
    ttl: u32,
    queries: HashMap<String, usize>,
}

/// A running test DNS server; see the module docs.
pub struct TestDns {
    pub addr: SocketAddr,
    state: Arc<Mutex<State>>,
    tasks: Vec<JoinHandle<()>>,
}

/// Default TTL: long enough that a test sees hickory's cache at work.
pub const DEFAULT_TTL: u32 = 60;

fn key(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

impl TestDns {
    /// Starts a server answering `records` with TTL [`DEFAULT_TTL`].
    pub async fn start(records: Vec<(&str, Vec<IpAddr>)>) -> TestDns {
        Self::start_with_ttl(records, DEFAULT_TTL).await
    }

    /// Starts a server answering `records` with the given TTL (0 disables client caching).
    pub async fn start_with_ttl(records: Vec<(&str, Vec<IpAddr>)>, ttl: u32) -> TestDns {
        let names = records
            .into_iter()
            .map(|(n, ips)| (key(n), Behaviour::Answer(ips)))
            .collect();
        let state = Arc::new(Mutex::new(State {
            names,
            ttl,
            queries: HashMap::new(),
        }));
        // UDP and TCP on the same port, as resolvers expect; retry if TCP's twin is taken.
        let (udp, tcp) = {
            let mut bound = None;
            for _ in 0..50 {
                let udp = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
                let port = udp.local_addr().unwrap().port();
                if let Ok(tcp) = TcpListener::bind((Ipv4Addr::LOCALHOST, port)).await {
                    bound = Some((udp, tcp));
                    break;
                }
            }
            bound.expect("no free port for UDP and TCP together")
        };
        let addr = udp.local_addr().unwrap();
        let tasks = vec![
            tokio::spawn(serve_udp(udp, state.clone())),
            tokio::spawn(serve_tcp(tcp, state.clone())),
        ];
        TestDns { addr, state, tasks }
    }

    /// Sets (or replaces) the answer for `name`.
    pub fn set(&self, name: &str, ips: Vec<IpAddr>) {
        self.set_behaviour(name, Behaviour::Answer(ips));
    }

    pub fn set_behaviour(&self, name: &str, behaviour: Behaviour) {
        self.state
            .lock()
            .unwrap()
            .names
            .insert(key(name), behaviour);
    }

    /// Makes `name` unknown again (NXDOMAIN).
    pub fn remove(&self, name: &str) {
        self.state.lock().unwrap().names.remove(&key(name));
    }

    /// Queries received for `name` so far, any type, UDP and TCP together.
    pub fn queries(&self, name: &str) -> usize {
        self.state
            .lock()
            .unwrap()
            .queries
            .get(&key(name))
            .copied()
            .unwrap_or(0)
    }

    /// Queries received for all names.
    pub fn total_queries(&self) -> usize {
        self.state.lock().unwrap().queries.values().sum()
    }

    pub fn stop(self) {}
}

impl Drop for TestDns {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

async fn serve_udp(sock: UdpSocket, state: Arc<Mutex<State>>) {
    let mut buf = vec![0u8; 4096];
    loop {
        let Ok((n, peer)) = sock.recv_from(&mut buf).await else {
            continue;
        };
        if let Some(reply) = respond(&buf[..n], &state, true) {
            let _ = sock.send_to(&reply, peer).await;
        }
    }
}

async fn serve_tcp(listener: TcpListener, state: Arc<Mutex<State>>) {
    // Dropping the set (when this task is aborted) aborts every connection task.
    let mut conns = JoinSet::new();
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        conns.spawn(serve_tcp_conn(stream, state.clone()));
        while conns.try_join_next().is_some() {}
    }
}

async fn serve_tcp_conn(mut stream: TcpStream, state: Arc<Mutex<State>>) {
    loop {
        let mut len = [0u8; 2];
        if stream.read_exact(&mut len).await.is_err() {
            return;
        }
        let mut msg = vec![0u8; usize::from(u16::from_be_bytes(len))];
        if stream.read_exact(&mut msg).await.is_err() {
            return;
        }
        if let Some(reply) = respond(&msg, &state, false) {
            let mut out = (reply.len() as u16).to_be_bytes().to_vec();
            out.extend_from_slice(&reply);
            if stream.write_all(&out).await.is_err() {
                return;
            }
        }
    }
}

const TYPE_A: u16 = 1;
const TYPE_SOA: u16 = 6;
const TYPE_AAAA: u16 = 28;
const TYPE_ANY: u16 = 255;
const CLASS_IN: u16 = 1;
const RCODE_FORMERR: u16 = 1;
const RCODE_SERVFAIL: u16 = 2;
const RCODE_NXDOMAIN: u16 = 3;
const RCODE_NOTIMP: u16 = 4;
/// Without EDNS a UDP answer must fit in 512 bytes; longer ones are truncated so the
/// client retries over TCP.
const UDP_LIMIT: usize = 512;

/// The question: name (lower case, dotless end), type, and where it ends in the message.
fn parse_question(q: &[u8]) -> Option<(String, u16, u16, usize)> {
    let mut i = 12;
    let mut name = String::new();
    loop {
        let len = usize::from(*q.get(i)?);
        i += 1;
        if len == 0 {
            break;
        }
        // Compression pointers and extended labels never appear in a stub's question.
        if len & 0xC0 != 0 {
            return None;
        }
        let label = q.get(i..i + len)?;
        if !name.is_empty() {
            name.push('.');
        }
        name.push_str(&String::from_utf8_lossy(label).to_ascii_lowercase());
        i += len;
    }
    let qtype = u16::from_be_bytes([*q.get(i)?, *q.get(i + 1)?]);
    let qclass = u16::from_be_bytes([*q.get(i + 2)?, *q.get(i + 3)?]);
    Some((name, qtype, qclass, i + 4))
}

fn header(id: [u8; 2], flags: u16, counts: [u16; 4]) -> Vec<u8> {
    let mut r = Vec::with_capacity(UDP_LIMIT);
    r.extend_from_slice(&id);
    r.extend_from_slice(&flags.to_be_bytes());
    for c in counts {
        r.extend_from_slice(&c.to_be_bytes());
    }
    r
}

fn put_name(r: &mut Vec<u8>, name: &str) {
    for label in name.split('.').filter(|l| !l.is_empty()) {
        r.push(label.len() as u8);
        r.extend_from_slice(label.as_bytes());
    }
    r.push(0);
}

fn put_record(r: &mut Vec<u8>, rtype: u16, ttl: u32, rdata: &[u8]) {
    r.extend_from_slice(&rtype.to_be_bytes());
    r.extend_from_slice(&CLASS_IN.to_be_bytes());
    r.extend_from_slice(&ttl.to_be_bytes());
    r.extend_from_slice(&(rdata.len() as u16).to_be_bytes());
    r.extend_from_slice(rdata);
}

/// An SOA in the authority section makes negative answers cacheable for `ttl` seconds.
fn put_soa(r: &mut Vec<u8>, ttl: u32) {
    r.push(0); // owner: the root, good enough for a test zone
    let mut rdata = Vec::new();
    put_name(&mut rdata, "ns.test");
    put_name(&mut rdata, "hostmaster.test");
    for v in [1u32, 3600, 600, 86400, ttl] {
        rdata.extend_from_slice(&v.to_be_bytes());
    }
    put_record(r, TYPE_SOA, ttl, &rdata);
}

/// Builds the reply to one query message; `None` means stay silent.
fn respond(q: &[u8], state: &Mutex<State>, udp: bool) -> Option<Vec<u8>> {
    if q.len() < 12 {
        return None;
    }
    let id = [q[0], q[1]];
    let flags = u16::from_be_bytes([q[2], q[3]]);
    if flags & 0x8000 != 0 {
        return None; // a response, not a query
    }
    let opcode = (flags >> 11) & 0xF;
    // QR, opcode echoed, AA, RD echoed, RA.
    let base = 0x8000 | (opcode << 11) | 0x0400 | (flags & 0x0100) | 0x0080;
    let qdcount = u16::from_be_bytes([q[4], q[5]]);
    if opcode != 0 {
        return Some(header(id, base | RCODE_NOTIMP, [0; 4]));
    }
    let Some((name, qtype, qclass, qend)) = parse_question(q).filter(|_| qdcount == 1) else {
        return Some(header(id, base | RCODE_FORMERR, [0; 4]));
    };
    let question = &q[12..qend];

    let (behaviour, ttl) = {
        let mut st = state.lock().unwrap();
        *st.queries.entry(name.clone()).or_default() += 1;
        (st.names.get(&name).cloned(), st.ttl)
    };
    if qclass != CLASS_IN {
        let mut r = header(id, base | RCODE_NOTIMP, [1, 0, 0, 0]);
        r.extend_from_slice(question);
        return Some(r);
    }
    let ips = match behaviour {
        Some(Behaviour::Drop) => return None,
        Some(Behaviour::ServFail) => {
            let mut r = header(id, base | RCODE_SERVFAIL, [1, 0, 0, 0]);
            r.extend_from_slice(question);
            return Some(r);
        }
        None => {
            let mut r = header(id, base | RCODE_NXDOMAIN, [1, 0, 1, 0]);
            r.extend_from_slice(question);
            put_soa(&mut r, ttl);
            return Some(r);
        }
        Some(Behaviour::Answer(ips)) => ips,
    };
    let matching: Vec<IpAddr> = ips
        .into_iter()
        .filter(|ip| {
            matches!(
                (ip, qtype),
                (_, TYPE_ANY) | (IpAddr::V4(_), TYPE_A) | (IpAddr::V6(_), TYPE_AAAA)
            )
        })
        .collect();
    let nscount = u16::from(matching.is_empty());
    let mut r = header(id, base, [1, matching.len() as u16, nscount, 0]);
    r.extend_from_slice(question);
    for ip in &matching {
        r.extend_from_slice(&[0xC0, 0x0C]); // pointer to the question's name
        match ip {
            IpAddr::V4(v4) => put_record(&mut r, TYPE_A, ttl, &v4.octets()),
            IpAddr::V6(v6) => put_record(&mut r, TYPE_AAAA, ttl, &v6.octets()),
        }
    }
    if matching.is_empty() {
        put_soa(&mut r, ttl);
    }
    if udp && r.len() > UDP_LIMIT {
        let mut t = header(id, base | 0x0200, [1, 0, 0, 0]); // TC: ask again over TCP
        t.extend_from_slice(question);
        return Some(t);
    }
    Some(r)
}
