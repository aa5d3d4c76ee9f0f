//! Hot reload from a Kubernetes ConfigMap volume, against the real binary.
//!
//! The kubelet publishes a ConfigMap as `<mount>/..<timestamp>/<key>` files, a
//! `..data` symlink to the current timestamped directory, and `<mount>/<key>`
//! symlinks to `..data/<key>`. An update writes a new timestamped directory,
//! renames a fresh symlink over `..data` (atomic) and deletes the old directory.
//!
//! Both ways of pointing at the mount reload on such a swap:
//! * `--config <mount>/tollgate.yaml` (what deploy/kubernetes and the Helm chart
//!   use), also covered in tests/python/test_deploy.py;
//! * `--config <mount>` (directory mode): the watcher lists the same `*.yaml`
//!   files the loader merges, skipping the hidden `..data` and `..<timestamp>`
//!   entries, and follows the symlinks to their content.
#![allow(clippy::panic, clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

struct Gateway {
    child: Child,
    admin: String,
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(config: &Path) -> Gateway {
    let mut child = Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .args(["run", "--config"])
        .arg(config)
        .args([
            "--proxy-listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn tollgate");
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line)
                && v["message"] == "listening"
            {
                let _ = tx.send(v["listen.admin"].as_str().unwrap_or_default().to_owned());
            }
        }
    });
    let admin = rx
        .recv_timeout(Duration::from_secs(15))
        .expect("gateway did not log 'listening'");
    Gateway { child, admin }
}

/// `GET /admin/config` over a plain socket: (version, default_action).
fn config_state(admin: &str) -> (u64, String) {
    let mut s = TcpStream::connect(admin).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(b"GET /admin/config HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).unwrap();
    let body = raw.split_once("\r\n\r\n").unwrap().1;
    let v: serde_json::Value = serde_json::from_str(body).unwrap();
    (
        v["status"]["version"].as_u64().unwrap(),
        v["default_action"].as_str().unwrap().to_owned(),
    )
}

/// Publishes `text` as the kubelet does (see the module docs).
fn publish(mount: &Path, stamp: &str, text: &str) {
    let dir = mount.join(format!("..{stamp}"));
    std::fs::create_dir(&dir).unwrap();
    std::fs::write(dir.join("tollgate.yaml"), text).unwrap();
    let data = mount.join("..data");
    let old = std::fs::read_link(&data).ok();
    let tmp = mount.join("..data_tmp");
    std::os::unix::fs::symlink(format!("..{stamp}"), &tmp).unwrap();
    std::fs::rename(&tmp, &data).unwrap();
    let link = mount.join("tollgate.yaml");
    if std::fs::symlink_metadata(&link).is_err() {
        std::os::unix::fs::symlink("..data/tollgate.yaml", &link).unwrap();
    }
    if let Some(old) = old {
        std::fs::remove_dir_all(mount.join(old)).unwrap();
    }
}

fn wait_for(admin: &str, action: &str) -> Option<(u64, String)> {
    let deadline = Instant::now() + Duration::from_secs(8);
    loop {
        let state = config_state(admin);
        if state.1 == action {
            return Some(state);
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

const DENY: &str = "default_action: deny\nlogging: { access_log: off }\n";
const ALLOW: &str = "default_action: allow\nlogging: { access_log: off }\n";

fn swap_reloads(config_arg: impl Fn(&Path) -> std::path::PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let mount = tmp.path().join("etc-tollgate");
    std::fs::create_dir(&mount).unwrap();
    publish(&mount, "2026_12_01_10_00_00.1", DENY);
    let gw = start(&config_arg(&mount));
    assert_eq!(config_state(&gw.admin), (1, "deny".to_owned()));

    publish(&mount, "2026_12_01_10_01_00.2", ALLOW);
    let after = wait_for(&gw.admin, "allow");
    assert!(
        after.is_some_and(|(v, _)| v > 1),
        "ConfigMap symlink swap was not reloaded: {:?}",
        config_state(&gw.admin)
    );
    // A second swap, after the first published directory was deleted.
    publish(&mount, "2026_12_01_10_02_00.3", DENY);
    assert!(wait_for(&gw.admin, "deny").is_some());
}

#[test]
fn configmap_symlink_swap_reloads_a_file_config() {
    swap_reloads(|mount| mount.join("tollgate.yaml"));
}

#[test]
fn configmap_symlink_swap_reloads_a_directory_config() {
    swap_reloads(|mount| mount.to_path_buf());
}
