//! The network guard: decides whether Tollgate may open a connection to an upstream address.
//!
//! It exists to stop server-side request forgery: a route, a redirect or a DNS answer must never
//! make the gateway talk to loopback, the private network, cloud metadata services or Tollgate's
//! own listeners. Every address the resolver returns is checked here, and the connector only ever
//! dials an address that passed (see `dns::resolve_checked`), so DNS rebinding cannot slip an
//! internal address in between check and connect. Pure logic, no I/O.
//!
//! Evaluation order for one `ip:port` (IPv4-mapped `::ffff:a.b.c.d` is first turned into `a.b.c.d`,
//! since a dual-stack socket reaches exactly that IPv4 host):
//! 1. a `deny` entry matching the address, or the IPv4 address it embeds → `ConfigDenied`.
//!    Deny wins whenever both lists match; how specific an entry is does not matter.
//! 2. an `allow` entry of the form `ip:port` matching exactly → allowed.
//! 3. one of Tollgate's own listeners → `OwnListener`. Only an exact `ip:port` allow lifts this:
//!    a broad CIDR allow (say `127.0.0.0/8` for local tests) must not open a request loop.
//! 4. an IPv6 address that embeds an IPv4 one (compatible, SIIT, NAT64 `64:ff9b::/96`, 6to4,
//!    Teredo) is denied with the embedded address's reason when that IPv4 address would be denied
//!    (an `allow` entry for the IPv4 address lifts this). So allowing the NAT64 prefix on a DNS64
//!    network still keeps `64:ff9b::10.0.0.1` out.
//! 5. an `allow` entry (IP or CIDR) matching the address → allowed; it wins over every built-in
//!    rule, metadata included, because the operator asked for exactly that.
//! 6. the built-in rules below; `allow_private` lifts only `Private` (RFC 1918, `fc00::/7`).
//!
//! Tunnelling and translation prefixes — NAT64 (`64:ff9b::/96`, `64:ff9b:1::/48`), 6to4
//! (`2002::/16`, and its relay anycast `192.88.99.0/24`) and Teredo (`2001::/32`) — are denied
//! outright unless allowed: an egress gateway does not need them, and where the embedded IPv4
//! can be found it is judged first (step 4) so the more precise reason is reported. The layout
//! of the local-use prefix `64:ff9b:1::/48` is chosen by its operator, so no address is
//! extracted from it; allowing it trusts that translator. The IETF protocol block `2001::/23`
//! (and `192.0.0.0/24`) is denied whole, including its few globally reachable anycast services,
//! and any IPv6 address outside global unicast `2000::/3` that no rule names is `Reserved`.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use ipnet::IpNet;

/// Why the guard refused an address. `as_str` gives a bounded, snake_case metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GuardDenial {
    Loopback,
    Private,
    LinkLocal,
    Metadata,
    /// Carrier-grade NAT, `100.64.0.0/10`.
    SharedAddressSpace,
    Unspecified,
    Broadcast,
    Multicast,
    Documentation,
    Benchmarking,
    Reserved,
    ThisNetwork,
    IetfProtocol,
    Nat64,
    SixToFour,
    Teredo,
    OwnListener,
    ConfigDenied,
}

impl GuardDenial {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Loopback => "loopback",
            Self::Private => "private",
            Self::LinkLocal => "link_local",
            Self::Metadata => "metadata",
            Self::SharedAddressSpace => "shared_address_space",
            Self::Unspecified => "unspecified",
            Self::Broadcast => "broadcast",
            Self::Multicast => "multicast",
            Self::Documentation => "documentation",
            Self::Benchmarking => "benchmarking",
            Self::Reserved => "reserved",
            Self::ThisNetwork => "this_network",
            Self::IetfProtocol => "ietf_protocol",
            Self::Nat64 => "nat64",
            Self::SixToFour => "six_to_four",
            Self::Teredo => "teredo",
            Self::OwnListener => "own_listener",
            Self::ConfigDenied => "config_denied",
        }
    }
}

impl fmt::Display for GuardDenial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

use GuardDenial as D;

/// Built-in IPv4 rules; first match wins, so specific entries precede the block holding them.
const V4_RULES: &[(Ipv4Addr, u8, GuardDenial)] = &[
    (Ipv4Addr::new(0, 0, 0, 0), 32, D::Unspecified),
    (Ipv4Addr::new(0, 0, 0, 0), 8, D::ThisNetwork),
    (Ipv4Addr::new(127, 0, 0, 0), 8, D::Loopback),
    (Ipv4Addr::new(10, 0, 0, 0), 8, D::Private),
    (Ipv4Addr::new(172, 16, 0, 0), 12, D::Private),
    (Ipv4Addr::new(192, 168, 0, 0), 16, D::Private),
    // AWS, GCP, Azure, Oracle and others serve instance metadata here.
    (Ipv4Addr::new(169, 254, 169, 254), 32, D::Metadata),
    (Ipv4Addr::new(169, 254, 0, 0), 16, D::LinkLocal),
    // Alibaba Cloud's metadata service sits inside the CGNAT block.
    (Ipv4Addr::new(100, 100, 100, 200), 32, D::Metadata),
    (Ipv4Addr::new(100, 64, 0, 0), 10, D::SharedAddressSpace),
    (Ipv4Addr::new(192, 0, 0, 0), 24, D::IetfProtocol),
    (Ipv4Addr::new(192, 0, 2, 0), 24, D::Documentation),
    (Ipv4Addr::new(198, 51, 100, 0), 24, D::Documentation),
    (Ipv4Addr::new(203, 0, 113, 0), 24, D::Documentation),
    (Ipv4Addr::new(198, 18, 0, 0), 15, D::Benchmarking),
    (Ipv4Addr::new(192, 88, 99, 0), 24, D::SixToFour),
    (Ipv4Addr::new(224, 0, 0, 0), 4, D::Multicast),
    (Ipv4Addr::new(255, 255, 255, 255), 32, D::Broadcast),
    (Ipv4Addr::new(240, 0, 0, 0), 4, D::Reserved),
];

/// An IPv6 prefix written by its first three groups, to keep the table below readable.
const fn p6(a: u16, b: u16, c: u16) -> Ipv6Addr {
    Ipv6Addr::new(a, b, c, 0, 0, 0, 0, 0)
}

/// Built-in IPv6 rules; first match wins. IPv4-mapped never reaches here (canonicalised).
const V6_RULES: &[(Ipv6Addr, u8, GuardDenial)] = &[
    (Ipv6Addr::UNSPECIFIED, 128, D::Unspecified),
    (Ipv6Addr::LOCALHOST, 128, D::Loopback),
    // IPv4-compatible (deprecated) and SIIT IPv4-translated: never a legitimate answer.
    (Ipv6Addr::UNSPECIFIED, 96, D::Reserved),
    (Ipv6Addr::new(0, 0, 0, 0, 0xffff, 0, 0, 0), 96, D::Reserved),
    (p6(0x64, 0xff9b, 0), 96, D::Nat64),
    (p6(0x64, 0xff9b, 1), 48, D::Nat64),
    (p6(0x100, 0, 0), 64, D::Reserved),
    (p6(0x2001, 0, 0), 32, D::Teredo),
    (p6(0x2001, 2, 0), 48, D::Benchmarking),
    (p6(0x2001, 0, 0), 23, D::IetfProtocol),
    (p6(0x2001, 0xdb8, 0), 32, D::Documentation),
    (p6(0x3fff, 0, 0), 20, D::Documentation),
    (p6(0x2002, 0, 0), 16, D::SixToFour),
    // AWS's IPv6 instance metadata endpoint, inside the unique-local block.
    (
        Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254),
        128,
        D::Metadata,
    ),
    (p6(0xfc00, 0, 0), 7, D::Private),
    (p6(0xfe80, 0, 0), 10, D::LinkLocal),
    // Deprecated site-local: private in spirit, but not what `allow_private` promises to lift.
    (p6(0xfec0, 0, 0), 10, D::Reserved),
    (p6(0xff00, 0, 0), 8, D::Multicast),
];

fn in_v4(ip: Ipv4Addr, net: Ipv4Addr, len: u8) -> bool {
    len == 0 || (ip.to_bits() ^ net.to_bits()) >> (32 - u32::from(len)) == 0
}

fn in_v6(ip: Ipv6Addr, net: Ipv6Addr, len: u8) -> bool {
    len == 0 || (ip.to_bits() ^ net.to_bits()) >> (128 - u32::from(len)) == 0
}

/// The built-in verdict for one address, before `allow_private`.
fn classify(ip: IpAddr) -> Option<GuardDenial> {
    match ip {
        IpAddr::V4(ip) => V4_RULES
            .iter()
            .find(|(net, len, _)| in_v4(ip, *net, *len))
            .map(|r| r.2),
        IpAddr::V6(ip) => {
            let hit = V6_RULES.iter().find(|(net, len, _)| in_v6(ip, *net, *len));
            match hit {
                Some(r) => Some(r.2),
                // Only global unicast is ever a legitimate upstream.
                None if !in_v6(ip, p6(0x2000, 0, 0), 3) => Some(D::Reserved),
                None => None,
            }
        }
    }
}

/// The IPv4 hosts that traffic to an IPv6 address may actually reach through a translation or
/// tunnelling mechanism. Fixed-size so the hot path does not allocate.
fn embedded_v4(ip: Ipv6Addr) -> [Option<Ipv4Addr>; 2] {
    let s = ip.segments();
    let bits = ip.to_bits();
    // The low 32 bits, the usual place for an embedded address.
    let low = Ipv4Addr::from_bits(bits as u32);
    let zero6 = s[..6] == [0; 6];
    if zero6 && bits > 1 {
        // IPv4-compatible ::a.b.c.d (`::` and `::1` are their own thing).
        return [Some(low), None];
    }
    if s[..6] == [0, 0, 0, 0, 0xffff, 0] || s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        // SIIT ::ffff:0:a.b.c.d and well-known NAT64 64:ff9b::a.b.c.d (RFC 6052, /96).
        return [Some(low), None];
    }
    if s[0] == 0x2002 {
        // 6to4: the relay's IPv4 address sits in bits 16..48.
        return [Some(Ipv4Addr::from_bits((bits >> 80) as u32)), None];
    }
    if s[0] == 0x2001 && s[1] == 0 {
        // Teredo: server in bits 32..64, client's public address obfuscated in the low 32 bits.
        let server = Ipv4Addr::from_bits((bits >> 64) as u32);
        return [Some(server), Some(Ipv4Addr::from_bits(!(bits as u32)))];
    }
    [None, None]
}

/// Parsed `allow` or `deny` entries.
#[derive(Debug, Clone, Default)]
struct Entries {
    nets: Vec<IpNet>,
    sockets: Vec<SocketAddr>,
}

impl Entries {
    fn parse(list: &[String], which: &str) -> Result<Self, String> {
        let mut out = Self::default();
        for raw in list {
            let s = raw.trim();
            if let Ok(sa) = s.parse::<SocketAddr>() {
                if sa.port() == 0 {
                    return Err(format!("network_guard.{which}: {s:?} has port 0"));
                }
                out.sockets
                    .push(SocketAddr::new(sa.ip().to_canonical(), sa.port()));
            } else if let Ok(ip) = s.parse::<IpAddr>() {
                out.nets.push(IpNet::from(ip.to_canonical()));
            } else if let Ok(net) = s.parse::<IpNet>() {
                out.nets.push(canonical_net(net.trunc()));
            } else {
                return Err(format!(
                    "network_guard.{which}: {s:?} is not an IP, a CIDR or ip:port \
                     (IPv6 with a port is written [::1]:443)"
                ));
            }
        }
        Ok(out)
    }

    fn matches_net(&self, ip: IpAddr) -> bool {
        self.nets.iter().any(|n| n.contains(&ip))
    }

    fn matches_socket(&self, ip: IpAddr, port: u16) -> bool {
        self.sockets
            .iter()
            .any(|s| s.ip() == ip && s.port() == port)
    }

    fn matches(&self, ip: IpAddr, port: u16) -> bool {
        self.matches_net(ip) || self.matches_socket(ip, port)
    }
}

/// `::ffff:10.0.0.0/104` means `10.0.0.0/8`; addresses are canonicalised the same way.
fn canonical_net(net: IpNet) -> IpNet {
    if let IpNet::V6(n) = net
        && n.prefix_len() >= 96
        && let IpAddr::V4(v4) = IpAddr::V6(n.network()).to_canonical()
        && let Ok(v4net) = IpNet::new(IpAddr::V4(v4), n.prefix_len() - 96)
    {
        return v4net;
    }
    net
}

/// Decides which upstream addresses Tollgate may connect to. Cheap to clone; build once per config.
#[derive(Debug, Clone)]
pub struct NetworkGuard {
    allow: Entries,
    deny: Entries,
    allow_private: bool,
    /// Listeners bound to a specific address.
    listeners: Vec<SocketAddr>,
    /// Ports of listeners bound to `0.0.0.0` or `::`.
    wildcard_ports: Vec<u16>,
    /// Extra addresses of this host that a wildcard listener answers on (besides loopback).
    local_ips: Vec<IpAddr>,
}

impl NetworkGuard {
    /// Parses the config entries (IP, CIDR, or `ip:port` with IPv6 as `[::1]:443`) and records
    /// Tollgate's own listener addresses. The error names the bad entry.
    pub fn new(
        cfg: &tollgate_config::NetworkGuard,
        own_listeners: &[SocketAddr],
    ) -> Result<Self, String> {
        let mut listeners = Vec::new();
        let mut wildcard_ports = Vec::new();
        for l in own_listeners {
            if l.ip().is_unspecified() {
                wildcard_ports.push(l.port());
            } else {
                listeners.push(SocketAddr::new(l.ip().to_canonical(), l.port()));
            }
        }
        Ok(Self {
            allow: Entries::parse(&cfg.allow, "allow")?,
            deny: Entries::parse(&cfg.deny, "deny")?,
            allow_private: cfg.allow_private,
            listeners,
            wildcard_ports,
            local_ips: Vec::new(),
        })
    }

    /// Addresses of this host's interfaces: a listener on `0.0.0.0`/`::` is reachable on each of
    /// them, so its port is refused there too. Without this only loopback and the unspecified
    /// address count as local (the guard does no I/O to discover interfaces).
    pub fn with_local_addrs(mut self, ips: impl IntoIterator<Item = IpAddr>) -> Self {
        self.local_ips
            .extend(ips.into_iter().map(|ip| ip.to_canonical()));
        self
    }

    /// `Ok` when Tollgate may connect to `addr`; see the module docs for the order of rules.
    pub fn check(&self, addr: SocketAddr) -> Result<(), GuardDenial> {
        let ip = addr.ip().to_canonical();
        let port = addr.port();
        let embedded = match ip {
            IpAddr::V6(v6) => embedded_v4(v6),
            IpAddr::V4(_) => [None, None],
        };
        let embedded = embedded.into_iter().flatten().map(IpAddr::V4);

        if self.deny.matches(ip, port) || embedded.clone().any(|e| self.deny.matches(e, port)) {
            return Err(D::ConfigDenied);
        }
        if self.allow.matches_socket(ip, port) {
            return Ok(());
        }
        if self.is_own_listener(ip, port) {
            return Err(D::OwnListener);
        }
        for e in embedded {
            if !self.allow.matches(e, port)
                && let Some(denial) = self.builtin(e)
            {
                return Err(denial);
            }
        }
        if self.allow.matches_net(ip) {
            return Ok(());
        }
        match self.builtin(ip) {
            Some(denial) => Err(denial),
            None => Ok(()),
        }
    }

    fn builtin(&self, ip: IpAddr) -> Option<GuardDenial> {
        match classify(ip) {
            Some(D::Private) if self.allow_private => None,
            other => other,
        }
    }

    fn is_own_listener(&self, ip: IpAddr, port: u16) -> bool {
        if self
            .listeners
            .iter()
            .any(|l| l.ip() == ip && l.port() == port)
        {
            return true;
        }
        // A wildcard listener answers on every local address; either family, since `::` is
        // usually dual-stack.
        self.wildcard_ports.contains(&port)
            && (ip.is_loopback() || ip.is_unspecified() || self.local_ips.contains(&ip))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn guard(allow: &[&str], deny: &[&str], allow_private: bool) -> NetworkGuard {
        let cfg = tollgate_config::NetworkGuard {
            allow: allow.iter().map(|s| s.to_string()).collect(),
            deny: deny.iter().map(|s| s.to_string()).collect(),
            allow_private,
        };
        NetworkGuard::new(&cfg, &[]).unwrap()
    }

    fn ip_check(g: &NetworkGuard, ip: &str, port: u16) -> Result<(), GuardDenial> {
        let ip: IpAddr = ip.parse().unwrap_or_else(|e| panic!("{ip}: {e}"));
        g.check(SocketAddr::new(ip, port))
    }

    fn assert_table(g: &NetworkGuard, table: &[(&str, Option<GuardDenial>)]) {
        for (ip, want) in table {
            let got = ip_check(g, ip, 443).err();
            assert_eq!(got, *want, "address {ip}");
        }
    }

    const OK: Option<GuardDenial> = None;

    // Every built-in IPv4 range: inside (both edges where it matters) and just outside.
    const V4_TABLE: &[(&str, Option<GuardDenial>)] = &[
        ("0.0.0.0", Some(D::Unspecified)),
        ("0.0.0.1", Some(D::ThisNetwork)),
        ("0.255.255.255", Some(D::ThisNetwork)),
        ("1.0.0.0", OK),
        ("127.0.0.1", Some(D::Loopback)),
        ("127.255.255.255", Some(D::Loopback)),
        ("126.255.255.255", OK),
        ("128.0.0.0", OK),
        ("10.0.0.0", Some(D::Private)),
        ("10.255.255.255", Some(D::Private)),
        ("9.255.255.255", OK),
        ("11.0.0.0", OK),
        ("172.16.0.0", Some(D::Private)),
        ("172.31.255.255", Some(D::Private)),
        ("172.15.255.255", OK),
        ("172.32.0.0", OK),
        ("192.168.0.0", Some(D::Private)),
        ("192.168.255.255", Some(D::Private)),
        ("192.167.255.255", OK),
        ("192.169.0.0", OK),
        ("169.254.169.254", Some(D::Metadata)),
        ("169.254.169.253", Some(D::LinkLocal)),
        ("169.254.0.0", Some(D::LinkLocal)),
        ("169.254.255.255", Some(D::LinkLocal)),
        ("169.253.255.255", OK),
        ("169.255.0.0", OK),
        ("100.100.100.200", Some(D::Metadata)),
        ("100.100.100.201", Some(D::SharedAddressSpace)),
        ("100.64.0.0", Some(D::SharedAddressSpace)),
        ("100.127.255.255", Some(D::SharedAddressSpace)),
        ("100.63.255.255", OK),
        ("100.128.0.0", OK),
        ("192.0.0.0", Some(D::IetfProtocol)),
        ("192.0.0.255", Some(D::IetfProtocol)),
        ("191.255.255.255", OK),
        ("192.0.1.0", OK),
        ("192.0.2.0", Some(D::Documentation)),
        ("192.0.2.255", Some(D::Documentation)),
        ("192.0.3.0", OK),
        ("198.51.100.0", Some(D::Documentation)),
        ("198.51.100.255", Some(D::Documentation)),
        ("198.51.99.255", OK),
        ("198.51.101.0", OK),
        ("203.0.113.0", Some(D::Documentation)),
        ("203.0.113.255", Some(D::Documentation)),
        ("203.0.112.255", OK),
        ("203.0.114.0", OK),
        ("198.18.0.0", Some(D::Benchmarking)),
        ("198.19.255.255", Some(D::Benchmarking)),
        ("198.17.255.255", OK),
        ("198.20.0.0", OK),
        ("192.88.99.1", Some(D::SixToFour)),
        ("192.88.98.255", OK),
        ("192.88.100.0", OK),
        ("224.0.0.0", Some(D::Multicast)),
        ("239.255.255.255", Some(D::Multicast)),
        ("223.255.255.255", OK),
        ("240.0.0.0", Some(D::Reserved)),
        ("255.255.255.254", Some(D::Reserved)),
        ("255.255.255.255", Some(D::Broadcast)),
        ("8.8.8.8", OK),
        ("1.1.1.1", OK),
    ];

    const V6_TABLE: &[(&str, Option<GuardDenial>)] = &[
        ("::", Some(D::Unspecified)),
        ("::1", Some(D::Loopback)),
        ("::100:0:0:1", Some(D::Reserved)),
        ("64:ff9b::8.8.8.8", Some(D::Nat64)),
        ("64:ff9b::1:0:0", Some(D::Reserved)),
        ("64:ff9b:1::8.8.8.8", Some(D::Nat64)),
        ("64:ff9b:1:ffff:ffff::", Some(D::Nat64)),
        ("64:ff9b:2::1", Some(D::Reserved)),
        ("100::", Some(D::Reserved)),
        ("100::ffff:ffff:ffff:ffff", Some(D::Reserved)),
        // Teredo with public server 65.54.227.120 and client 8.8.8.8 (stored XOR-ed).
        ("2001:0:4136:e378:8000:63bf:f7f7:f7f7", Some(D::Teredo)),
        ("2001:1::1", Some(D::IetfProtocol)),
        ("2001:1ff:ffff::1", Some(D::IetfProtocol)),
        ("2001:200::1", OK),
        ("2000:ffff::1", OK),
        ("2001:2::", Some(D::Benchmarking)),
        ("2001:2:0:ffff::1", Some(D::Benchmarking)),
        ("2001:2:1::1", Some(D::IetfProtocol)),
        ("2001:db8::1", Some(D::Documentation)),
        ("2001:db8:ffff::1", Some(D::Documentation)),
        ("2001:db7:ffff::1", OK),
        ("2001:db9::1", OK),
        ("3fff::1", Some(D::Documentation)),
        ("3fff:fff:ffff::1", Some(D::Documentation)),
        ("3fff:1000::1", OK),
        ("3ffe:ffff::1", OK),
        ("2002:808:808::1", Some(D::SixToFour)),
        ("2001:ffff::1", OK),
        ("2003::1", OK),
        ("fd00:ec2::254", Some(D::Metadata)),
        ("fd00:ec2::253", Some(D::Private)),
        ("fc00::", Some(D::Private)),
        ("fdff:ffff::1", Some(D::Private)),
        ("fbff:ffff::1", Some(D::Reserved)),
        ("fe80::1", Some(D::LinkLocal)),
        ("febf:ffff::1", Some(D::LinkLocal)),
        ("fe7f::1", Some(D::Reserved)),
        ("fec0::1", Some(D::Reserved)),
        ("ff00::", Some(D::Multicast)),
        ("ff02::1", Some(D::Multicast)),
        ("feff:ffff::1", Some(D::Reserved)),
        ("2606:4700::1111", OK),
        ("2a00:1450:4001::1", OK),
        ("1fff:ffff::1", Some(D::Reserved)),
        ("4000::1", Some(D::Reserved)),
    ];

    #[test]
    fn builtin_ipv4_ranges() {
        assert_table(&guard(&[], &[], false), V4_TABLE);
    }

    #[test]
    fn builtin_ipv6_ranges() {
        assert_table(&guard(&[], &[], false), V6_TABLE);
    }

    /// Each IPv4 verdict must carry over to every IPv6 form embedding that address, with the
    /// IPv4 reason; public IPv4 inside a tunnel form gets the tunnel's reason instead.
    #[test]
    fn embedded_ipv4_forms_are_judged_by_the_ipv4_address() {
        let g = guard(&[], &[], false);
        for (v4s, want) in V4_TABLE {
            let v4: Ipv4Addr = v4s.parse().unwrap();
            let [a, b, c, d] = v4.octets();
            let hi = u16::from_be_bytes([a, b]);
            let lo = u16::from_be_bytes([c, d]);
            let mapped = v4.to_ipv6_mapped();
            assert_eq!(
                ip_check(&g, &mapped.to_string(), 443).err(),
                *want,
                "mapped {mapped}"
            );
            let forms: [(Ipv6Addr, GuardDenial); 5] = [
                (Ipv6Addr::new(0, 0, 0, 0, 0, 0, hi, lo), D::Reserved), // compatible
                (Ipv6Addr::new(0, 0, 0, 0, 0xffff, 0, hi, lo), D::Reserved), // SIIT
                (Ipv6Addr::new(0x64, 0xff9b, 0, 0, 0, 0, hi, lo), D::Nat64),
                (Ipv6Addr::new(0x2002, hi, lo, 0, 0, 0, 0, 1), D::SixToFour),
                // Teredo via a public server, client obfuscated.
                (
                    Ipv6Addr::new(0x2001, 0, 0x4136, 0xe378, 0x8000, 0x63bf, !hi, !lo),
                    D::Teredo,
                ),
            ];
            for (form, tunnel) in forms {
                // `::0.0.0.0` and `::0.0.0.1` are `::` and `::1`, covered by the v6 table.
                if form.to_bits() <= 1 {
                    continue;
                }
                let expect = want.unwrap_or(tunnel);
                assert_eq!(
                    g.check(SocketAddr::new(form.into(), 443)),
                    Err(expect),
                    "{form}"
                );
            }
        }
        // Teredo's server address is judged too.
        assert_eq!(
            ip_check(&g, "2001:0:7f00:1:8000:63bf:f7f7:f7f7", 443),
            Err(D::Loopback)
        );
    }

    #[test]
    fn ip_port_allow_matches_only_that_port() {
        let g = guard(&["127.0.0.1:8080", "[::1]:8443"], &[], false);
        assert_eq!(ip_check(&g, "127.0.0.1", 8080), Ok(()));
        assert_eq!(ip_check(&g, "::ffff:127.0.0.1", 8080), Ok(()));
        assert_eq!(ip_check(&g, "127.0.0.1", 8081), Err(D::Loopback));
        assert_eq!(ip_check(&g, "127.0.0.2", 8080), Err(D::Loopback));
        assert_eq!(ip_check(&g, "::1", 8443), Ok(()));
        assert_eq!(ip_check(&g, "::1", 8444), Err(D::Loopback));
    }

    #[test]
    fn cidr_and_ip_allow_override_builtin_rules() {
        let g = guard(
            &["10.1.0.0/16", "169.254.169.254", "::ffff:192.168.0.0/112"],
            &[],
            false,
        );
        assert_eq!(ip_check(&g, "10.1.2.3", 1), Ok(()));
        assert_eq!(ip_check(&g, "10.1.255.255", 65535), Ok(()));
        assert_eq!(ip_check(&g, "10.2.0.1", 443), Err(D::Private));
        assert_eq!(ip_check(&g, "169.254.169.254", 80), Ok(()));
        assert_eq!(ip_check(&g, "169.254.169.253", 80), Err(D::LinkLocal));
        // A mapped CIDR entry means the IPv4 block.
        assert_eq!(ip_check(&g, "192.168.7.7", 80), Ok(()));
        assert_eq!(ip_check(&g, "172.16.0.1", 80), Err(D::Private));
    }

    #[test]
    fn allowing_a_translation_prefix_still_judges_the_embedded_ipv4() {
        let g = guard(&["64:ff9b::/96", "2002::/16"], &[], false);
        assert_eq!(ip_check(&g, "64:ff9b::8.8.8.8", 443), Ok(()));
        assert_eq!(ip_check(&g, "64:ff9b::10.0.0.1", 443), Err(D::Private));
        assert_eq!(
            ip_check(&g, "64:ff9b::169.254.169.254", 443),
            Err(D::Metadata)
        );
        assert_eq!(ip_check(&g, "2002:808:808::1", 443), Ok(()));
        assert_eq!(ip_check(&g, "2002:7f00:1::1", 443), Err(D::Loopback));
        // Allowing the IPv4 destination itself lifts it in every form.
        let g = guard(&["64:ff9b::/96", "10.0.0.1"], &[], false);
        assert_eq!(ip_check(&g, "64:ff9b::10.0.0.1", 443), Ok(()));
    }

    #[test]
    fn deny_entries_win_over_allow_and_cover_embedded_forms() {
        let g = guard(
            &["8.8.8.0/24", "1.2.3.4:443"],
            &["8.8.8.8", "1.2.3.4:443", "9.9.9.0/24"],
            false,
        );
        assert_eq!(ip_check(&g, "8.8.8.8", 443), Err(D::ConfigDenied));
        assert_eq!(ip_check(&g, "8.8.8.9", 443), Ok(()));
        assert_eq!(ip_check(&g, "1.2.3.4", 443), Err(D::ConfigDenied));
        assert_eq!(ip_check(&g, "1.2.3.4", 444), Ok(()));
        assert_eq!(ip_check(&g, "9.9.9.9", 53), Err(D::ConfigDenied));
        assert_eq!(ip_check(&g, "::ffff:9.9.9.9", 53), Err(D::ConfigDenied));
        assert_eq!(ip_check(&g, "64:ff9b::9.9.9.9", 53), Err(D::ConfigDenied));
        assert_eq!(ip_check(&g, "2002:909:909::1", 53), Err(D::ConfigDenied));
        let g = guard(&[], &["2606:4700::/32"], false);
        assert_eq!(ip_check(&g, "2606:4700::1111", 443), Err(D::ConfigDenied));
        assert_eq!(ip_check(&g, "2606:4701::1", 443), Ok(()));
    }

    #[test]
    fn allow_private_lifts_only_private() {
        let g = guard(&[], &[], true);
        let table = [
            ("10.0.0.1", OK),
            ("172.20.1.1", OK),
            ("192.168.1.1", OK),
            ("::ffff:10.0.0.1", OK),
            ("fd12:3456::1", OK),
            ("169.254.169.254", Some(D::Metadata)),
            ("100.100.100.200", Some(D::Metadata)),
            ("fd00:ec2::254", Some(D::Metadata)),
            ("127.0.0.1", Some(D::Loopback)),
            ("::1", Some(D::Loopback)),
            ("169.254.1.1", Some(D::LinkLocal)),
            ("fe80::1", Some(D::LinkLocal)),
            ("100.64.0.1", Some(D::SharedAddressSpace)),
            ("fec0::1", Some(D::Reserved)),
            // The tunnel itself stays denied; only the embedded check passes.
            ("64:ff9b::10.0.0.1", Some(D::Nat64)),
        ];
        assert_table(&g, &table);
    }

    #[test]
    fn own_listeners_are_refused() {
        let cfg = tollgate_config::NetworkGuard {
            allow: vec![
                "127.0.0.0/8".into(),
                "8.8.8.8:9001".into(),
                "127.0.0.1:9002".into(),
            ],
            ..Default::default()
        };
        let listeners: Vec<SocketAddr> = [
            "8.8.8.8:9001",
            "127.0.0.1:9000",
            "127.0.0.1:9002",
            "0.0.0.0:7000",
            "[::]:7001",
        ]
        .iter()
        .map(|s| s.parse().unwrap())
        .collect();
        let g = NetworkGuard::new(&cfg, &listeners)
            .unwrap()
            .with_local_addrs(["8.8.4.4".parse().unwrap()]);
        let sa = |s: &str| g.check(s.parse().unwrap());
        // A broad CIDR allow does not open a loop to our own listener...
        assert_eq!(sa("127.0.0.1:9000"), Err(D::OwnListener));
        assert_eq!(sa("[::ffff:127.0.0.1]:9000"), Err(D::OwnListener));
        assert_eq!(sa("127.0.0.1:9009"), Ok(()));
        assert_eq!(sa("127.0.0.2:9000"), Ok(()));
        // ...but an exact ip:port allow does.
        assert_eq!(sa("127.0.0.1:9002"), Ok(()));
        assert_eq!(sa("8.8.8.8:9001"), Ok(()));
        // Wildcard listeners: any loopback or known local address, either family.
        for a in [
            "127.0.0.9:7000",
            "[::1]:7000",
            "127.0.0.1:7001",
            "8.8.4.4:7000",
            "0.0.0.0:7001",
        ] {
            assert_eq!(sa(a), Err(D::OwnListener), "{a}");
        }
        assert_eq!(sa("8.8.8.8:7000"), Ok(()));
        assert_eq!(sa("8.8.4.4:7002"), Ok(()));
        let plain = NetworkGuard::new(&Default::default(), &listeners).unwrap();
        assert_eq!(
            plain.check("8.8.8.8:9001".parse().unwrap()),
            Err(D::OwnListener)
        );
        assert_eq!(plain.check("8.8.8.8:9000".parse().unwrap()), Ok(()));
    }

    #[test]
    fn entries_parse_and_bad_entries_are_named() {
        let ok = [
            "10.0.0.0/8",
            " 10.1.2.3/24 ",
            "::1",
            "[::1]:443",
            "1.2.3.4:80",
            "fd00::/8",
        ];
        let cfg = tollgate_config::NetworkGuard {
            allow: ok.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        };
        let g = NetworkGuard::new(&cfg, &[]).unwrap();
        // 10.1.2.3/24 is taken as the network 10.1.2.0/24.
        assert_eq!(ip_check(&g, "10.1.2.200", 1), Ok(()));
        for bad in [
            "nonsense",
            "10.0.0.0/33",
            "1.2.3.4:0",
            "1.2.3.4:99999",
            "",
            "[::1]",
        ] {
            let cfg = tollgate_config::NetworkGuard {
                deny: vec![bad.into()],
                ..Default::default()
            };
            let err = NetworkGuard::new(&cfg, &[]).unwrap_err();
            assert!(
                err.contains("network_guard.deny") && err.contains(bad.trim()),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn labels_are_distinct_snake_case() {
        let all = [
            D::Loopback,
            D::Private,
            D::LinkLocal,
            D::Metadata,
            D::SharedAddressSpace,
            D::Unspecified,
            D::Broadcast,
            D::Multicast,
            D::Documentation,
            D::Benchmarking,
            D::Reserved,
            D::ThisNetwork,
            D::IetfProtocol,
            D::Nat64,
            D::SixToFour,
            D::Teredo,
            D::OwnListener,
            D::ConfigDenied,
        ];
        let labels: std::collections::HashSet<_> = all.iter().map(|d| d.as_str()).collect();
        assert_eq!(labels.len(), all.len());
        for l in labels {
            assert!(
                l.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'),
                "{l}"
            );
        }
        assert_eq!(D::SharedAddressSpace.to_string(), "shared_address_space");
    }
}
