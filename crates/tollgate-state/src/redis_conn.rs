//! Connections to the shared Redis in its three topologies, behind one cheap-to-clone [`Conn`]
//! that the scripts run on:
//!
//! - **Single server** (`redis://` or `rediss://`): the redis crate's `ConnectionManager`, one
//!   multiplexed connection that reconnects in the background. This is the hot path of the
//!   plain case: a clone is a few reference counts, nothing else per decision.
//! - **Sentinel**: the master's address is asked from the sentinels (`SENTINEL
//!   get-master-addr-by-name`, first sentinel that answers wins) and a `ConnectionManager` is
//!   kept for it. Any call that fails for a connection reason or gets `READONLY` (a demoted
//!   master), and every failed heartbeat ([`Conn::refresh`]), asks the sentinels again in the
//!   background; when the master moved, calls switch to a manager for the new address.
//! - **Cluster**: the crate's async cluster connection (slot map, `MOVED`/`ASK` redirects,
//!   reconnects), created on first use so a gateway starts while the cluster is down. Every
//!   decision's keys share one hash tag, so each script call is single-slot.
//!
//! TLS (rustls, the workspace's aws-lc-rs provider) applies to every connection of a topology,
//! sentinels included, with an optional private CA and client certificate (mTLS).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{Route, RoutingInfo, SingleNodeRoutingInfo, Slot, SlotAddr};
use redis::{
    AsyncConnectionConfig, Client, Cmd, ConnectionInfo, IntoConnectionInfo, Pipeline, RedisFuture,
    TlsCertificates, Value,
};
use tokio::sync::{OnceCell, watch};

use crate::StoreError;

/// Where the shared Redis is.
#[derive(Clone, PartialEq, Eq)]
pub enum Topology {
    /// One server: `redis://[user:password@]host:port[/db]` or `rediss://…` (TLS).
    Single { url: String },
    /// A master found through Sentinel.
    Sentinel {
        /// The monitored master's name (`sentinel monitor <name> …`).
        master: String,
        /// Sentinel addresses, `host:port`, asked in order.
        nodes: Vec<String>,
        /// ACL user and password of the sentinels themselves (not of the master).
        username: Option<String>,
        password: Option<String>,
    },
    /// A Redis Cluster, discovered from these seed nodes (`host:port`).
    Cluster { nodes: Vec<String> },
}

/// TLS material, PEM bytes (read from files by the caller).
#[derive(Clone, Default, PartialEq, Eq)]
pub struct TlsPem {
    /// Trusted CA certificate(s); `None`: the system's roots.
    pub ca: Option<Vec<u8>>,
    /// Client certificate chain and key for mutual TLS.
    pub client_cert: Option<Vec<u8>>,
    pub client_key: Option<Vec<u8>>,
}

/// How to connect: topology, TLS and data-node credentials.
#[derive(Clone)]
pub(crate) struct ConnSpec {
    pub topology: Topology,
    /// `Some`: TLS for every connection (for `Single`, the URL must then be `rediss://`).
    pub tls: Option<TlsPem>,
    /// ACL user/password of the data nodes; override what a URL carries.
    pub username: Option<String>,
    pub password: Option<String>,
    pub timeout: Duration,
}

/// A connection to the shared Redis, whatever its topology. Clones share the connection.
#[derive(Clone)]
pub(crate) enum Conn {
    Single(ConnectionManager),
    Sentinel(Arc<SentinelConn>),
    Cluster(Arc<ClusterLazy>),
}

fn invalid(msg: impl Into<String>) -> StoreError {
    StoreError::Invalid(msg.into())
}

/// The redis crate's error for a TLS option that cannot be used, with the detail kept (it never
/// contains key material: only what failed to parse).
fn tls_err(what: &str, e: &redis::RedisError) -> StoreError {
    invalid(format!("{what}: {e}"))
}

fn certificates(tls: &TlsPem) -> TlsCertificates {
    TlsCertificates {
        client_tls: match (&tls.client_cert, &tls.client_key) {
            (Some(cert), Some(key)) => Some(redis::ClientTlsConfig {
                client_cert: cert.clone(),
                client_key: key.clone(),
            }),
            _ => None,
        },
        root_cert: tls.ca.clone(),
    }
}

/// Connection info for `host:port` (TLS when `tls`), with credentials when given.
fn node_info(
    host_port: &str,
    tls: bool,
    username: Option<&str>,
    password: Option<&str>,
) -> Result<ConnectionInfo, StoreError> {
    if host_port.contains("://") || host_port.contains('@') || host_port.contains('/') {
        return Err(invalid(format!(
            "node {host_port:?}: expected host:port (credentials and TLS are separate settings)"
        )));
    }
    let scheme = if tls { "rediss" } else { "redis" };
    let info = format!("{scheme}://{host_port}")
        .into_connection_info()
        .map_err(|_| invalid(format!("node {host_port:?} is not a valid host:port")))?;
    Ok(with_credentials(info, username, password))
}

fn with_credentials(
    info: ConnectionInfo,
    username: Option<&str>,
    password: Option<&str>,
) -> ConnectionInfo {
    let mut settings = info.redis_settings().clone();
    if let Some(u) = username {
        settings = settings.set_username(u);
    }
    if let Some(p) = password {
        settings = settings.set_password(p);
    }
    info.set_redis_settings(settings)
}

/// A client for one server (TLS material attached when the address is TLS).
fn client_for(info: ConnectionInfo, tls: Option<&TlsPem>) -> Result<Client, StoreError> {
    match tls {
        Some(t) => Client::build_with_tls(info, certificates(t))
            .map_err(|e| tls_err("TLS settings are not usable", &e)),
        None => Client::open(info).map_err(|_| invalid("redis address is not valid")),
    }
}

fn manager_config(timeout: Duration) -> ConnectionManagerConfig {
    ConnectionManagerConfig::new()
        .set_connection_timeout(Some(timeout))
        .set_response_timeout(Some(timeout))
        // Reconnection runs in the background; keep its back-off short so recovery after an
        // outage is quick, and each caller is bounded by `timeout` anyway.
        .set_number_of_retries(2)
        .set_max_delay(Duration::from_millis(500))
}

/// The single server's client (TLS material parsed), checked against the TLS settings.
fn single_client(spec: &ConnSpec, url: &str) -> Result<Client, StoreError> {
    let info = url
        .into_connection_info()
        .map_err(|_| invalid("redis url is not valid"))?;
    let is_tls = matches!(info.addr(), redis::ConnectionAddr::TcpTls { .. });
    if spec.tls.is_some() && !is_tls {
        return Err(invalid("TLS options need a rediss:// url"));
    }
    let info = with_credentials(info, spec.username.as_deref(), spec.password.as_deref());
    let tls = is_tls.then(|| spec.tls.clone().unwrap_or_default());
    client_for(info, tls.as_ref())
}

/// The sentinels' connection infos (TLS material checked once).
fn sentinel_infos(
    spec: &ConnSpec,
    master: &str,
    nodes: &[String],
    username: Option<&str>,
    password: Option<&str>,
) -> Result<Vec<ConnectionInfo>, StoreError> {
    if master.is_empty() || nodes.is_empty() {
        return Err(invalid(
            "sentinel needs a master name and at least one node",
        ));
    }
    let tls = spec.tls.is_some();
    let infos = nodes
        .iter()
        .map(|n| node_info(n, tls, username, password))
        .collect::<Result<Vec<_>, _>>()?;
    if let (Some(t), Some(first)) = (&spec.tls, infos.first()) {
        client_for(first.clone(), Some(t))?;
    }
    Ok(infos)
}

fn cluster_client(
    spec: &ConnSpec,
    nodes: &[String],
) -> Result<redis::cluster::ClusterClient, StoreError> {
    if nodes.is_empty() {
        return Err(invalid("cluster needs at least one seed node"));
    }
    let (user, pass) = (spec.username.as_deref(), spec.password.as_deref());
    let seeds = nodes
        .iter()
        .map(|n| node_info(n, spec.tls.is_some(), user, pass))
        .collect::<Result<Vec<_>, _>>()?;
    let mut b = redis::cluster::ClusterClientBuilder::new(seeds)
        .connection_timeout(spec.timeout)
        .response_timeout(spec.timeout)
        // Redirects (MOVED/ASK) and slot-map refreshes are retried by the crate; keep the
        // waits short, callers are bounded by `timeout` anyway.
        .retries(3)
        .min_retry_wait(5)
        .max_retry_wait(100);
    if let Some(u) = user {
        b = b.username(u);
    }
    if let Some(p) = pass {
        b = b.password(p);
    }
    if let Some(t) = &spec.tls {
        b = b.certs(certificates(t));
    }
    b.build()
        .map_err(|e| tls_err("cluster settings are not usable", &e))
}

impl Conn {
    /// Checks the settings (addresses parse, TLS material is usable) without connecting and
    /// without needing a runtime.
    pub(crate) fn check(spec: &ConnSpec) -> Result<(), StoreError> {
        match &spec.topology {
            Topology::Single { url } => single_client(spec, url).map(drop),
            Topology::Sentinel {
                master,
                nodes,
                username,
                password,
            } => sentinel_infos(
                spec,
                master,
                nodes,
                username.as_deref(),
                password.as_deref(),
            )
            .map(drop),
            Topology::Cluster { nodes } => cluster_client(spec, nodes).map(drop),
        }
    }

    /// Builds the connection without connecting (never awaits: the first call connects), and
    /// the [`Probe`] that diagnoses it when it fails.
    pub(crate) fn new(spec: ConnSpec) -> Result<(Self, Probe), StoreError> {
        match &spec.topology {
            Topology::Single { url } => {
                let client = single_client(&spec, url)?;
                let mgr = ConnectionManager::new_lazy_with_config(
                    client.clone(),
                    manager_config(spec.timeout),
                )
                .map_err(|e| invalid(format!("redis connection: {e}")))?;
                Ok((
                    Self::Single(mgr),
                    Probe::Single(Box::new(client), spec.timeout),
                ))
            }
            Topology::Sentinel {
                master,
                nodes,
                username,
                password,
            } => {
                let sentinels = sentinel_infos(
                    &spec,
                    master,
                    nodes,
                    username.as_deref(),
                    password.as_deref(),
                )?;
                let (tx, _) = watch::channel(None);
                let s = Arc::new(SentinelConn {
                    master: master.clone(),
                    sentinels,
                    current: tx,
                    resolving: AtomicBool::new(false),
                    spec,
                });
                Ok((Self::Sentinel(Arc::clone(&s)), Probe::Sentinel(s)))
            }
            Topology::Cluster { nodes } => {
                let c = Arc::new(ClusterLazy {
                    client: cluster_client(&spec, nodes)?,
                    conn: OnceCell::new(),
                });
                Ok((Self::Cluster(Arc::clone(&c)), Probe::Cluster(c)))
            }
        }
    }

    /// Asks the sentinels for the master again (in the background), after a failure. No-op for
    /// the other topologies, whose connections find their way back on their own.
    pub(crate) fn refresh(&self) {
        if let Self::Sentinel(s) = self {
            SentinelConn::refresh(s);
        }
    }

    /// Runs `cmd` (keyless, e.g. `SCAN`) on the node that holds the slot of `slot_key`: in a
    /// cluster a keyless command would otherwise go to a random node.
    pub(crate) async fn query_on_slot<T: redis::FromRedisValue>(
        &mut self,
        cmd: Cmd,
        slot_key: &str,
    ) -> redis::RedisResult<T> {
        match self {
            Self::Cluster(c) => {
                let mut conn = c.get().await?;
                let route = Route::with_slot(Slot::for_key(slot_key), SlotAddr::Master);
                let v = conn
                    .route_command(
                        cmd,
                        RoutingInfo::SingleNode(SingleNodeRoutingInfo::SpecificNode(route)),
                    )
                    .await?;
                Ok(redis::from_redis_value(v)?)
            }
            _ => cmd.query_async(self).await,
        }
    }
}

/// Diagnoses a failing store with a fresh connection attempt, so the log says *why* (refused,
/// certificate not trusted, authentication failed…) rather than only that calls time out: the
/// managed connections retry in the background and callers see just their timeout.
pub(crate) enum Probe {
    Single(Box<Client>, Duration),
    Sentinel(Arc<SentinelConn>),
    Cluster(Arc<ClusterLazy>),
}

impl Probe {
    /// `Err(why)` when a new connection cannot be made and answer `PING`.
    pub(crate) async fn check(&self) -> Result<(), String> {
        let ping = |client: Client, timeout: Duration| async move {
            let t = timeout.max(Duration::from_millis(500));
            let cfg = AsyncConnectionConfig::new()
                .set_connection_timeout(Some(t))
                .set_response_timeout(Some(t));
            let mut c = client
                .get_multiplexed_async_connection_with_config(&cfg)
                .await
                .map_err(|e| e.to_string())?;
            redis::cmd("PING")
                .query_async::<()>(&mut c)
                .await
                .map_err(|e| e.to_string())
        };
        match self {
            Self::Single(client, timeout) => ping((**client).clone(), *timeout).await,
            Self::Sentinel(s) => {
                let addr = s.resolve().await.map_err(|e| format!("sentinel: {e}"))?;
                let client = s.client_for_master(&addr).map_err(|e| e.to_string())?;
                ping(client, s.spec.timeout)
                    .await
                    .map_err(|e| format!("master {addr}: {e}"))
            }
            Self::Cluster(c) => c
                .client
                .get_async_connection()
                .await
                .map(drop)
                .map_err(|e| e.to_string()),
        }
    }
}

/// True for failures after which the sentinels should be asked again.
fn master_may_have_moved(e: &redis::RedisError) -> bool {
    e.is_io_error()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || e.is_timeout()
        || e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::ReadOnly)
}

/// The Sentinel topology's state: the sentinels and the manager for the current master.
pub(crate) struct SentinelConn {
    master: String,
    sentinels: Vec<ConnectionInfo>,
    spec: ConnSpec,
    /// The current master's address and its manager (`None` until first resolved).
    current: watch::Sender<Option<(String, ConnectionManager)>>,
    /// A resolution is running (at most one at a time).
    resolving: AtomicBool,
}

impl SentinelConn {
    /// The current master's manager, resolving it first if never known.
    async fn manager(self: &Arc<Self>) -> redis::RedisResult<ConnectionManager> {
        if let Some((_, m)) = self.current.borrow().as_ref() {
            return Ok(m.clone());
        }
        let mut rx = self.current.subscribe();
        Self::refresh(self);
        // Bounded by the caller's timeout (every call is).
        let got = rx
            .wait_for(Option::is_some)
            .await
            .map_err(|_| closed("sentinel resolution stopped"))?;
        got.as_ref()
            .map(|(_, m)| m.clone())
            .ok_or_else(|| closed("no master known"))
    }

    fn refresh(self: &Arc<Self>) {
        if self.resolving.swap(true, Ordering::AcqRel) {
            return;
        }
        // Weak: a store dropped by a reload ends its resolution loop.
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            // Keeps retrying while no master was ever found (callers are waiting); after
            // that, one round per trigger (failures and heartbeats trigger it again).
            while let Some(me) = weak.upgrade() {
                match me.resolve().await {
                    Ok(addr) => {
                        me.install(addr);
                        me.resolving.store(false, Ordering::Release);
                        return;
                    }
                    Err(e) => {
                        // Debug only: the store's health check logs each new cause once.
                        tracing::debug!(
                            error = %e,
                            redis.sentinel.master = %me.master,
                            "no sentinel named the shared limit store's master"
                        );
                        if me.current.borrow().is_some() {
                            me.resolving.store(false, Ordering::Release);
                            return;
                        }
                    }
                }
                drop(me);
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        });
    }

    /// Asks each sentinel in turn; the first that names the master wins.
    async fn resolve(&self) -> Result<String, String> {
        let cfg = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.spec.timeout.max(Duration::from_millis(200))))
            .set_response_timeout(Some(self.spec.timeout.max(Duration::from_millis(200))));
        let mut last = String::from("no sentinel configured");
        for info in &self.sentinels {
            let client = match client_for(info.clone(), self.spec.tls.as_ref()) {
                Ok(c) => c,
                Err(e) => {
                    last = e.to_string();
                    continue;
                }
            };
            let asked = async {
                let mut c = client
                    .get_multiplexed_async_connection_with_config(&cfg)
                    .await?;
                redis::cmd("SENTINEL")
                    .arg("get-master-addr-by-name")
                    .arg(&self.master)
                    .query_async::<Option<(String, u16)>>(&mut c)
                    .await
            };
            match asked.await {
                Ok(Some((host, port))) => {
                    return Ok(if host.contains(':') {
                        format!("[{host}]:{port}")
                    } else {
                        format!("{host}:{port}")
                    });
                }
                Ok(None) => last = format!("sentinel does not know master {:?}", self.master),
                Err(e) => last = e.to_string(),
            }
        }
        Err(last)
    }

    fn client_for_master(&self, addr: &str) -> Result<Client, StoreError> {
        let info = node_info(
            addr,
            self.spec.tls.is_some(),
            self.spec.username.as_deref(),
            self.spec.password.as_deref(),
        )?;
        client_for(info, self.spec.tls.as_ref())
    }

    /// Switches to `addr` unless it is already the current master.
    fn install(&self, addr: String) {
        if self
            .current
            .borrow()
            .as_ref()
            .is_some_and(|(a, _)| *a == addr)
        {
            return;
        }
        let made = self.client_for_master(&addr).and_then(|client| {
            ConnectionManager::new_lazy_with_config(client, manager_config(self.spec.timeout))
                .map_err(|e| invalid(format!("redis connection: {e}")))
        });
        match made {
            Ok(mgr) => {
                tracing::info!(
                    redis.sentinel.master = %self.master,
                    redis.address = %addr,
                    "shared limit store: using the master named by sentinel"
                );
                self.current.send_replace(Some((addr, mgr)));
            }
            Err(e) => tracing::warn!(error = %e, "shared limit store: cannot use the new master"),
        }
    }
}

fn closed(msg: &'static str) -> redis::RedisError {
    redis::RedisError::from(std::io::Error::new(std::io::ErrorKind::NotConnected, msg))
}

/// The cluster connection, made on first use (and again after a failed first attempt).
pub(crate) struct ClusterLazy {
    client: redis::cluster::ClusterClient,
    conn: OnceCell<ClusterConnection>,
}

impl ClusterLazy {
    async fn get(&self) -> redis::RedisResult<ClusterConnection> {
        self.conn
            .get_or_try_init(|| self.client.get_async_connection())
            .await
            .cloned()
    }
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Self::Single(m) => m.req_packed_command(cmd),
            Self::Sentinel(s) => Box::pin(async move {
                let mut m = s.manager().await?;
                let r = m.req_packed_command(cmd).await;
                if let Err(e) = &r
                    && master_may_have_moved(e)
                {
                    SentinelConn::refresh(s);
                }
                r
            }),
            Self::Cluster(c) => Box::pin(async move {
                let mut conn = c.get().await?;
                conn.req_packed_command(cmd).await
            }),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Self::Single(m) => m.req_packed_commands(cmd, offset, count),
            Self::Sentinel(s) => Box::pin(async move {
                let mut m = s.manager().await?;
                let r = m.req_packed_commands(cmd, offset, count).await;
                if let Err(e) = &r
                    && master_may_have_moved(e)
                {
                    SentinelConn::refresh(s);
                }
                r
            }),
            Self::Cluster(c) => Box::pin(async move {
                let mut conn = c.get().await?;
                conn.req_packed_commands(cmd, offset, count).await
            }),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Single(m) => m.get_db(),
            Self::Sentinel(_) | Self::Cluster(_) => 0,
        }
    }
}
