//! `RedisStore` over Redis Cluster and Sentinel, against redis-server processes these tests start
//! on ephemeral loopback ports (and kill on drop). Skipped, with a line saying so, when
//! redis-server is not installed.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tollgate_state::redis::{TlsPem, Topology};
use tollgate_state::{LimitRequest, LimitSpec, RedisConfig, RedisStore, StoreError, Window};

fn installed() -> bool {
    let ok = Command::new("redis-server")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        eprintln!("SKIPPED: redis-server is not installed");
    }
    ok
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A redis-server (or sentinel) process, killed on drop.
struct Server {
    port: u16,
    child: Child,
    /// Extra redis-cli arguments to reach it (password, TLS files).
    cli_extra: Vec<String>,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    fn start_auth(dir: &Path, port: u16, extra: &[&str], auth: &str) -> Server {
        let cli = vec!["-a".into(), auth.into(), "--no-auth-warning".into()];
        Self::spawn(dir, port, extra, cli, false)
    }

    /// `tls`: listens on `port` with TLS only (the TLS settings are in `extra`).
    fn spawn(dir: &Path, port: u16, extra: &[&str], cli_extra: Vec<String>, tls: bool) -> Server {
        std::fs::create_dir_all(dir).unwrap();
        let p = port.to_string();
        let mut args: Vec<&str> = extra.to_vec();
        if tls {
            args.extend(["--port", "0", "--tls-port", &p]);
        } else {
            args.extend(["--port", &p]);
        }
        args.extend(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]);
        let child = Command::new("redis-server")
            .args(&args)
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let s = Server {
            port,
            child,
            cli_extra,
        };
        assert!(
            wait(Duration::from_secs(10), || s.cli(&["PING"]) == "PONG"),
            "redis-server on {port} did not start"
        );
        s
    }

    fn cli(&self, args: &[&str]) -> String {
        let out = bounded(
            Command::new("redis-cli")
                .args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
                .args(&self.cli_extra)
                .args(args),
            Duration::from_secs(5),
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }
}

/// Runs `cmd` to completion, killing it after `limit` (its output so far is returned).
fn bounded(cmd: &mut Command, limit: Duration) -> std::process::Output {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let t = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if t.elapsed() > limit {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

fn wait(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let t = Instant::now();
    while t.elapsed() < limit {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

fn hourly(key: &str, limit: u64) -> LimitRequest {
    LimitRequest::new(
        key,
        LimitSpec::FixedWindow {
            limit,
            window: Window::Hour,
        },
        1,
    )
}

fn sliding(key: &str, limit: u64) -> LimitRequest {
    LimitRequest::new(
        key,
        LimitSpec::Sliding {
            limit,
            window_ms: 3_600_000,
        },
        1,
    )
}

/// PEM files of a test CA, a server certificate for 127.0.0.1 and a client certificate.
struct Certs {
    ca: std::path::PathBuf,
    server_cert: std::path::PathBuf,
    server_key: std::path::PathBuf,
    client_cert: std::path::PathBuf,
    client_key: std::path::PathBuf,
}

fn make_certs(dir: &Path) -> Certs {
    std::fs::create_dir_all(dir).unwrap();
    let run = |args: &[&str]| {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    let mut a = vec!["req", "-x509"];
    a.extend(ec);
    a.extend([
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "2",
        "-subj",
        "/CN=tgtest CA",
    ]);
    a.extend(["-addext", "basicConstraints=critical,CA:TRUE"]);
    a.extend(["-addext", "keyUsage=critical,keyCertSign,cRLSign"]);
    run(&a);
    for (name, ext) in [
        (
            "server",
            "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth,clientAuth\n",
        ),
        ("client", "extendedKeyUsage=clientAuth\n"),
    ] {
        let (key, csr, pem, cnf) = (
            format!("{name}.key"),
            format!("{name}.csr"),
            format!("{name}.pem"),
            format!("{name}.cnf"),
        );
        let mut a = vec!["req"];
        a.extend(ec);
        a.extend(["-keyout", &key, "-out", &csr, "-subj", "/CN=tgtest"]);
        run(&a);
        std::fs::write(dir.join(&cnf), ext).unwrap();
        run(&[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            &pem,
            "-days",
            "2",
            "-extfile",
            &cnf,
        ]);
    }
    Certs {
        ca: dir.join("ca.pem"),
        server_cert: dir.join("server.pem"),
        server_key: dir.join("server.key"),
        client_cert: dir.join("client.pem"),
        client_key: dir.join("client.key"),
    }
}

/// Three masters (no replicas), each with its own ephemeral bus port; TLS everywhere (client
/// certificates required) when `certs` is given.
fn start_cluster(dir: &Path, certs: Option<&Certs>) -> Vec<Server> {
    let s = |p: &std::path::PathBuf| p.to_str().unwrap().to_owned();
    let tls_cli: Vec<String> = certs.map_or_else(Vec::new, |c| {
        vec![
            "--tls".into(),
            "--cacert".into(),
            s(&c.ca),
            "--cert".into(),
            s(&c.client_cert),
            "--key".into(),
            s(&c.client_key),
        ]
    });
    let tls_server: Vec<String> = certs.map_or_else(Vec::new, |c| {
        vec![
            "--tls-cluster".into(),
            "yes".into(),
            "--tls-replication".into(),
            "yes".into(),
            "--tls-cert-file".into(),
            s(&c.server_cert),
            "--tls-key-file".into(),
            s(&c.server_key),
            "--tls-ca-cert-file".into(),
            s(&c.ca),
            "--tls-auth-clients".into(),
            "yes".into(),
        ]
    });
    let nodes: Vec<Server> = (0..3)
        .map(|i| {
            let port = free_port();
            let bus = free_port().to_string();
            let conf = format!("nodes-{port}.conf");
            let mut args = vec![
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                &conf,
                "--cluster-port",
                &bus,
            ];
            args.extend(tls_server.iter().map(String::as_str));
            Server::spawn(
                &dir.join(format!("n{i}")),
                port,
                &args,
                tls_cli.clone(),
                certs.is_some(),
            )
        })
        .collect();
    let out = bounded(
        Command::new("redis-cli")
            .args(&tls_cli)
            .args(["--cluster", "create"])
            .args(nodes.iter().map(|n| format!("127.0.0.1:{}", n.port)))
            .args(["--cluster-replicas", "0", "--cluster-yes"]),
        Duration::from_secs(30),
    );
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(wait(Duration::from_secs(15), || nodes.iter().all(|n| n
        .cli(&["CLUSTER", "INFO"])
        .contains("cluster_state:ok"))));
    nodes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_over_mutual_tls_with_a_private_ca() {
    if !installed() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let certs = make_certs(&dir.path().join("pki"));
    let nodes = start_cluster(dir.path(), Some(&certs));
    let read = |p: &std::path::PathBuf| Some(std::fs::read(p).unwrap());
    let cfg = |with_client_cert: bool| {
        let mut cfg = RedisConfig::with_topology(Topology::Cluster {
            nodes: vec![format!("127.0.0.1:{}", nodes[0].port)],
        });
        cfg.tls = Some(TlsPem {
            ca: read(&certs.ca),
            client_cert: if with_client_cert {
                read(&certs.client_cert)
            } else {
                None
            },
            client_key: if with_client_cert {
                read(&certs.client_key)
            } else {
                None
            },
        });
        cfg.prefix = "tgct".into();
        cfg.timeout = Duration::from_secs(2);
        cfg
    };
    let store = RedisStore::new(cfg(true)).await.unwrap();
    for i in 0..6 {
        let key = format!("api{i}:hourly:-");
        let d = store.check_all(&[hourly(&key, 2)]).await.unwrap();
        assert!(d[0].allowed);
        store.check_all(&[hourly(&key, 2)]).await.unwrap();
        let d = store.check_all(&[hourly(&key, 2)]).await.unwrap();
        assert!(!d[0].allowed, "{key}");
    }
    assert_eq!(store.diagnose().await, Ok(()));
    // Without the client certificate the servers refuse the handshake: unavailable, and the
    // diagnosis says so.
    let anon = RedisStore::new(cfg(false)).await.unwrap();
    assert!(matches!(
        anon.check_all(&[hourly("api0:hourly:-", 2)]).await,
        Err(StoreError::Unavailable(_))
    ));
    assert!(anon.diagnose().await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_runs_every_script_in_one_slot_and_follows_redirects() {
    if !installed() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let nodes = start_cluster(dir.path(), None);
    let addrs: Vec<String> = nodes
        .iter()
        .map(|n| format!("127.0.0.1:{}", n.port))
        .collect();

    // One seed is enough: the rest of the cluster is discovered.
    let mut cfg = RedisConfig::with_topology(Topology::Cluster {
        nodes: vec![addrs[1].clone()],
    });
    cfg.prefix = "tgc".into();
    cfg.timeout = Duration::from_secs(2);
    let store = RedisStore::new(cfg).await.unwrap();

    // Twelve APIs: their hash tags spread over all three nodes, so most calls start on the
    // wrong node for some of them and are redirected (MOVED) or routed by the slot map.
    let apis: Vec<String> = (0..12).map(|i| format!("api{i}")).collect();
    let mut tasks = Vec::new();
    for api in &apis {
        for _ in 0..8 {
            let s = store.clone();
            let api = api.clone();
            tasks.push(tokio::spawn(async move {
                // Two limits (two keys) in one script call: single-slot through the tag.
                let reqs = [
                    hourly(&format!("{api}:hourly:-"), 5),
                    sliding(&format!("{api}:roomy:-"), 1000),
                ];
                s.check_all(&reqs).await.unwrap()[0].allowed
            }));
        }
    }
    let mut allowed = std::collections::HashMap::<usize, usize>::new();
    for (i, t) in tasks.into_iter().enumerate() {
        if t.await.unwrap() {
            *allowed.entry(i / 8).or_default() += 1;
        }
    }
    assert_eq!(allowed.len(), apis.len());
    assert!(allowed.values().all(|&n| n == 5), "{allowed:?}");
    // Keys did spread: every node holds some.
    for n in &nodes {
        assert!(!n.cli(&["--scan", "--pattern", "{tgc:*"]).is_empty());
    }

    // Heartbeat, shared back-off and the admin listing work in the cluster too.
    assert_eq!(
        store
            .heartbeat("me", Duration::from_secs(10))
            .await
            .unwrap(),
        1
    );
    assert_eq!(
        store
            .heartbeat("you", Duration::from_secs(10))
            .await
            .unwrap(),
        2
    );
    let bk = store.backoff_key("api3", None);
    store
        .extend_backoff(&bk, Duration::from_secs(30))
        .await
        .unwrap();
    let left = store.backoff_left(&bk).await.unwrap().unwrap();
    assert!(left > Duration::from_secs(20) && left <= Duration::from_secs(30));
    for api in &apis {
        let mut listed = store
            .keys_with_prefix(&format!("{api}:"), 100)
            .await
            .unwrap();
        listed.sort();
        assert_eq!(
            listed,
            [format!("{api}:hourly:-"), format!("{api}:roomy:-")],
            "{api}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sentinel_follows_a_failover_to_the_promoted_replica() {
    if !installed() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (mp, rp, sp) = (free_port(), free_port(), free_port());
    // Every node and the sentinel require a password (a different one for the sentinel).
    let data_auth = ["--requirepass", "datapw", "--masterauth", "datapw"];
    let master = Server::start_auth(&dir.path().join("m"), mp, &data_auth, "datapw");
    let mps = mp.to_string();
    let mut replica_args = vec!["--replicaof", "127.0.0.1", &mps];
    replica_args.extend(data_auth);
    let replica = Server::start_auth(&dir.path().join("r"), rp, &replica_args, "datapw");
    assert!(wait(Duration::from_secs(10), || replica
        .cli(&["INFO", "replication"])
        .contains("master_link_status:up")));
    let sdir = dir.path().join("s");
    std::fs::create_dir_all(&sdir).unwrap();
    let conf = sdir.join("sentinel.conf");
    std::fs::write(
        &conf,
        format!(
            "requirepass sentpw\nsentinel monitor tg 127.0.0.1 {mp} 1\n\
             sentinel auth-pass tg datapw\nsentinel down-after-milliseconds tg 500\n\
             sentinel failover-timeout tg 2000\n"
        ),
    )
    .unwrap();
    let sentinel = Server::start_auth(&sdir, sp, &[conf.to_str().unwrap(), "--sentinel"], "sentpw");
    assert!(wait(Duration::from_secs(15), || sentinel
        .cli(&["SENTINEL", "replicas", "tg"])
        .contains(&rp.to_string())));

    let sentinel_cfg = |sentinel_password: &str| {
        let mut cfg = RedisConfig::with_topology(Topology::Sentinel {
            master: "tg".into(),
            // A dead sentinel first: the next one is asked.
            nodes: vec![
                format!("127.0.0.1:{}", free_port()),
                format!("127.0.0.1:{sp}"),
            ],
            username: None,
            password: Some(sentinel_password.into()),
        });
        cfg.password = Some("datapw".into());
        cfg.prefix = "tgs".into();
        cfg.timeout = Duration::from_secs(1);
        cfg
    };
    // A wrong sentinel password: no master is ever known, calls fail as unavailable and the
    // diagnosis names the cause.
    let wrong = RedisStore::new(sentinel_cfg("nope")).await.unwrap();
    let req = [hourly("a:h:-", 1000)];
    assert!(matches!(
        wrong.check_all(&req).await,
        Err(StoreError::Unavailable(_))
    ));
    let why = wrong.diagnose().await.unwrap_err();
    assert!(why.starts_with("sentinel:"), "{why}");
    drop(wrong);

    let store = RedisStore::new(sentinel_cfg("sentpw")).await.unwrap();
    assert_eq!(store.diagnose().await, Ok(()));
    assert!(store.check_all(&req).await.unwrap()[0].allowed);
    assert!(!master.cli(&["HGETALL", "{tgs:a}:h:-"]).is_empty());

    // A manual failover: the old master stays up but is demoted (its writes now fail with
    // READONLY or a dropped connection); the store must find the new master on its own.
    // (Refused with NOGOODSLAVE until the sentinel has talked to the replica itself.)
    assert!(wait(Duration::from_secs(15), || sentinel
        .cli(&["SENTINEL", "FAILOVER", "tg"])
        == "OK"));
    assert!(wait(Duration::from_secs(20), || sentinel
        .cli(&["SENTINEL", "get-master-addr-by-name", "tg"])
        .ends_with(&rp.to_string())));
    // Until the old master is demoted it still accepts writes (Redis replication is
    // asynchronous: those are lost in any Sentinel setup); the store moves when a call fails
    // (READONLY, connection killed by the sentinel) or a heartbeat asks the sentinels again,
    // which `refresh_topology` stands for here.
    let before = replica.cli(&["HGETALL", "{tgs:a}:h:-"]);
    let t = Instant::now();
    let mut errors = Vec::new();
    loop {
        match store.check_all(&req).await {
            Ok(d) => {
                assert!(d[0].allowed);
                if replica.cli(&["HGETALL", "{tgs:a}:h:-"]) != before {
                    break;
                }
            }
            Err(e) => {
                assert!(matches!(e, StoreError::Unavailable(_)), "{e:?}");
                errors.push(e);
            }
        }
        assert!(
            t.elapsed() < Duration::from_secs(15),
            "never moved to the new master: {errors:?}"
        );
        store.refresh_topology();
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Settled: the promoted replica is the master and every decision lands there.
    assert!(
        replica
            .cli(&["INFO", "replication"])
            .contains("role:master")
    );
    let before = replica.cli(&["HGETALL", "{tgs:a}:h:-"]);
    assert!(store.check_all(&req).await.unwrap()[0].allowed);
    assert_ne!(replica.cli(&["HGETALL", "{tgs:a}:h:-"]), before);
}
