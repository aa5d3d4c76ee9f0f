//! Name resolution for upstream connections, and the one place where answers meet the network
//! guard.
//!
//! `resolve_checked` resolves a host and returns only the addresses the guard allows; the
//! connector dials one of those and never resolves again. That is what defeats DNS rebinding:
//! there is no second lookup whose answer could differ from the checked one.
//!
//! Lookups go through hickory's in-process resolver, which caches positive answers for their TTL
//! (and negative ones for the SOA's negative TTL). Names are queried as fully qualified: the
//! system search list is not applied, so a short or dotted name never silently turns into an
//! internal one and a Kubernetes-style `ndots:5` does not multiply every lookup.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use hickory_resolver::TokioResolver;
use hickory_resolver::config::{LookupIpStrategy, NameServerConfig, ResolveHosts, ResolverConfig};
use hickory_resolver::net::NetError;
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::proto::rr::Name;

use crate::guard::{GuardDenial, NetworkGuard};

/// Why a name could not be resolved. The message names the host (never anything secret).
#[derive(Debug, thiserror::Error)]
pub enum DnsError {
    /// The name does not exist or has no A/AAAA records. Not worth retrying soon.
    #[error("host {0} not found")]
    NotFound(String),
    /// No answer within the configured `dns.timeout`. Safe to retry.
    #[error("DNS lookup for {0} timed out")]
    Timeout(String),
    /// The DNS servers failed (SERVFAIL, REFUSED, I/O). Safe to retry.
    #[error("DNS lookup failed: {0}")]
    Failed(String),
    /// The resolver could not be built from the configuration.
    #[error("invalid DNS configuration: {0}")]
    Config(String),
}

impl DnsError {
    /// Whether trying the same lookup again could succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Self::Timeout(_) | Self::Failed(_))
    }
}

/// Result of `resolve_checked` when no address can be used.
#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    /// Every address the name resolved to was refused; carries the first address's reason.
    #[error("upstream address refused by the network guard ({0})")]
    Blocked(GuardDenial),
    #[error(transparent)]
    Dns(#[from] DnsError),
}

/// The upstream resolver. Cheap to clone; clones share one cache.
#[derive(Debug, Clone)]
pub struct Resolver {
    inner: Arc<TokioResolver>,
    timeout: Duration,
}

impl Resolver {
    /// With `cfg.servers` empty, reads the system configuration (`/etc/resolv.conf`, and the
    /// hosts file as the system resolver would); otherwise asks exactly those servers over UDP,
    /// falling back to TCP for truncated answers, without consulting the hosts file.
    pub fn new(cfg: &tollgate_config::Dns) -> Result<Self, DnsError> {
        let timeout = cfg.timeout.get();
        if timeout.is_zero() {
            return Err(DnsError::Config(
                "dns.timeout must be greater than zero".into(),
            ));
        }
        let provider = TokioRuntimeProvider::default();
        let mut builder = if cfg.servers.is_empty() {
            TokioResolver::builder(provider).map_err(|e| {
                DnsError::Config(format!(
                    "cannot read the system resolver configuration: {e}"
                ))
            })?
        } else {
            let servers = cfg.servers.iter().map(|sa| name_server(*sa)).collect();
            let mut b = TokioResolver::builder_with_config(
                ResolverConfig::from_name_servers(servers),
                provider,
            );
            b.options_mut().use_hosts_file = ResolveHosts::Never;
            b
        };
        let opts = builder.options_mut();
        // One retry (hickory counts retries, not tries), each try getting half the budget, so a
        // lost UDP packet is survived and a dead server still fails within `dns.timeout`.
        opts.attempts = 1;
        opts.timeout = (timeout / 2).max(Duration::from_millis(1));
        opts.ip_strategy = LookupIpStrategy::Ipv4AndIpv6;
        // Names are passed fully qualified; ndots only matters for relative names.
        opts.ndots = 1;
        let inner = builder
            .build()
            .map_err(|e| DnsError::Config(format!("cannot build the DNS resolver: {e}")))?;
        Ok(Self {
            inner: Arc::new(inner),
            timeout,
        })
    }

    /// Resolves `host` (already normalised: lower case, no port) to its A and AAAA addresses in
    /// answer order, A first. An IP literal (also `[v6]`) is returned as-is without a query.
    /// `localhost` gets no special treatment here: hickory answers it (and `*.localhost`) with
    /// loopback without asking a server (RFC 6761), and the guard decides what that may reach.
    pub async fn lookup(&self, host: &str) -> Result<Vec<IpAddr>, DnsError> {
        if let Some(ip) = ip_literal(host) {
            return Ok(vec![ip]);
        }
        let mut name = Name::from_utf8(host).map_err(|_| DnsError::NotFound(host.to_owned()))?;
        name.set_fqdn(true);
        let answer = tokio::time::timeout(self.timeout, self.inner.lookup_ip(name))
            .await
            .map_err(|_| DnsError::Timeout(host.to_owned()))?
            .map_err(|e| map_error(host, &e))?;
        let ips: Vec<IpAddr> = answer.iter().collect();
        if ips.is_empty() {
            return Err(DnsError::NotFound(host.to_owned()));
        }
        Ok(ips)
    }
}

fn name_server(sa: SocketAddr) -> NameServerConfig {
    let mut ns = NameServerConfig::udp_and_tcp(sa.ip());
    for conn in &mut ns.connections {
        conn.port = sa.port();
    }
    ns
}

fn ip_literal(host: &str) -> Option<IpAddr> {
    let bare = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    bare.parse().ok()
}

fn map_error(host: &str, e: &NetError) -> DnsError {
    if e.is_nx_domain() || e.is_no_records_found() {
        return DnsError::NotFound(host.to_owned());
    }
    match e {
        NetError::Timeout => DnsError::Timeout(host.to_owned()),
        NetError::Io(io) if io.kind() == std::io::ErrorKind::TimedOut => {
            DnsError::Timeout(host.to_owned())
        }
        other => DnsError::Failed(format!("{host}: {other}")),
    }
}

/// Resolves `host` and keeps only the addresses `guard` allows, in answer order, as `ip:port`
/// (IPv4-mapped answers become plain IPv4, duplicates dropped). The caller must connect only to
/// these. Nothing allowed → `Blocked` with the first address's reason.
pub async fn resolve_checked(
    resolver: &Resolver,
    guard: &NetworkGuard,
    host: &str,
    port: u16,
) -> Result<Vec<SocketAddr>, ResolveError> {
    let ips = resolver.lookup(host).await?;
    let mut allowed: Vec<SocketAddr> = Vec::with_capacity(ips.len());
    let mut first_denial = None;
    for ip in ips {
        let addr = SocketAddr::new(ip.to_canonical(), port);
        match guard.check(addr) {
            Ok(()) if !allowed.contains(&addr) => allowed.push(addr),
            Ok(()) => {}
            Err(denial) => {
                tracing::debug!(
                    dns.host = host,
                    net.addr = %addr,
                    guard.denial = denial.as_str(),
                    "resolved address refused by the network guard"
                );
                first_denial.get_or_insert(denial);
            }
        }
    }
    match first_denial {
        Some(denial) if allowed.is_empty() => Err(ResolveError::Blocked(denial)),
        _ if allowed.is_empty() => Err(DnsError::NotFound(host.to_owned()).into()),
        _ => Ok(allowed),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(servers: Vec<SocketAddr>) -> tollgate_config::Dns {
        tollgate_config::Dns {
            servers,
            timeout: tollgate_config::Duration::from_secs(2),
        }
    }

    #[tokio::test]
    async fn ip_literals_are_returned_without_a_query() {
        // Port 9 on loopback: nothing answers there, so a query would fail.
        let r = Resolver::new(&cfg(vec!["127.0.0.1:9".parse().unwrap()])).unwrap();
        assert_eq!(
            r.lookup("10.0.0.1").await.unwrap(),
            vec![IpAddr::from([10, 0, 0, 1])]
        );
        let v6: IpAddr = "2001:db8::1".parse().unwrap();
        assert_eq!(r.lookup("2001:db8::1").await.unwrap(), vec![v6]);
        assert_eq!(r.lookup("[2001:db8::1]").await.unwrap(), vec![v6]);
    }

    #[test]
    fn zero_timeout_is_a_config_error() {
        let mut c = cfg(vec![]);
        c.timeout = tollgate_config::Duration::from_millis(0);
        assert!(matches!(Resolver::new(&c), Err(DnsError::Config(_))));
    }

    #[tokio::test]
    async fn system_configuration_builds() {
        // The machine may lack /etc/resolv.conf; then the error must say so, not panic.
        match Resolver::new(&cfg(vec![])) {
            Ok(_) | Err(DnsError::Config(_)) => {}
            Err(e) => panic!("unexpected error {e}"),
        }
    }

    #[test]
    fn retryability() {
        assert!(DnsError::Timeout("a".into()).is_retryable());
        assert!(DnsError::Failed("a".into()).is_retryable());
        assert!(!DnsError::NotFound("a".into()).is_retryable());
        assert!(!DnsError::Config("a".into()).is_retryable());
    }
}
