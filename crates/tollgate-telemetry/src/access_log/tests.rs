use super::*;
use std::net::IpAddr;
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

const KEYS: [&str; 22] = [
    "time",
    "request_id",
    "kind",
    "peer",
    "consumer",
    "api",
    "method",
    "scheme",
    "host",
    "path",
    "status",
    "decision",
    "reason",
    "bytes_in",
    "bytes_out",
    "duration_ms",
    "upstream_ms",
    "upstream_addr",
    "attempts",
    "credential",
    "dlp",
    "cache",
];

fn record<'a>(request_id: &'a str, host: &'a str, path: &'a str) -> AccessRecord<'a> {
    AccessRecord {
        time: SystemTime::now(),
        request_id,
        kind: "forward",
        peer: IpAddr::from([127, 0, 0, 1]),
        consumer: None,
        api: Some("example"),
        method: "POST",
        scheme: "http",
        host,
        path,
        status: 403,
        decision: "deny",
        reason: Some("host_not_allowed"),
        bytes_in: 10,
        bytes_out: 99,
        duration: Duration::from_micros(1500),
        upstream_duration: None,
        upstream_addr: None,
        attempts: 0,
        credential: None,
        dlp: None,
        cache: None,
    }
}

fn dropped(metrics: &Metrics) -> String {
    metrics
        .encode()
        .lines()
        .find_map(|l| l.strip_prefix("tollgate_access_log_dropped_total "))
        .unwrap_or("missing")
        .to_owned()
}

#[test]
fn file_lines_are_json_with_exact_keys() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("access.log");
    let path_str = path.to_str().unwrap();
    std::fs::write(&path, "existing\n").unwrap();

    let metrics = Arc::new(Metrics::new());
    let log = AccessLog::open(path_str, &metrics).unwrap();
    let hostile = [
        "plain",
        "quote\" and backslash\\",
        "new\nline\r\n",
        "ctl\u{0}\u{1}\u{1b}[31m\u{7f}\u{1c}\u{1d}\u{1e}",
        "seps\u{85}\u{2028}\u{2029}",
        "\u{fffd}\u{feff}\u{10ffff}\u{d7ff}",
        "{\"injected\":true}\n{\"a\":1}",
    ];
    for (i, h) in hostile.iter().enumerate() {
        log.log(&record(&i.to_string(), h, h));
    }
    log.flush();

    let text = std::fs::read_to_string(&path).unwrap();
    let mut lines = text.split('\n');
    assert_eq!(lines.next(), Some("existing"), "file must be appended to");
    let lines: Vec<&str> = lines.filter(|l| !l.is_empty()).collect();
    assert_eq!(lines.len(), hostile.len(), "{text}");
    for (i, line) in lines.iter().enumerate() {
        // Also one line for readers that split on Unicode line breaks.
        assert_eq!(line.lines().count(), 1, "{line}");
        assert!(!line.contains(['\u{85}', '\u{2028}', '\u{2029}']), "{line}");
        let value: serde_json::Value = serde_json::from_str(line).unwrap();
        let object = value.as_object().unwrap();
        let keys: Vec<&str> = object.keys().map(String::as_str).collect();
        let mut expected = KEYS.to_vec();
        expected.sort_unstable();
        let mut keys_sorted = keys.clone();
        keys_sorted.sort_unstable();
        assert_eq!(keys_sorted, expected);
        assert_eq!(object["request_id"], i.to_string());
        assert_eq!(object["host"], hostile[i]);
        assert_eq!(object["path"], hostile[i]);
        assert_eq!(object["peer"], "127.0.0.1");
        assert_eq!(object["status"], 403);
        assert_eq!(object["reason"], "host_not_allowed");
        assert!(object["consumer"].is_null());
        assert_eq!(object["duration_ms"], 1.5);
        assert!(object["time"].as_str().unwrap().ends_with('Z'));
    }
    // Key order on the wire follows the documented order.
    let first = lines[0];
    let positions: Vec<usize> = KEYS
        .iter()
        .map(|k| first.find(&format!("\"{k}\":")).unwrap())
        .collect();
    assert!(positions.windows(2).all(|w| w[0] < w[1]), "{first}");
    assert_eq!(dropped(&metrics), "0");
}

#[test]
fn clones_share_one_writer_and_flush_covers_all() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nested-name.log");
    let metrics = Metrics::new();
    let log = AccessLog::open(path.to_str().unwrap(), &metrics).unwrap();
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let log = log.clone();
            std::thread::spawn(move || {
                for i in 0..100 {
                    log.log(&record(&format!("{t}-{i}"), "h", "/"));
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    log.flush();
    let text = std::fs::read_to_string(&path).unwrap();
    let written = text.lines().count();
    let lost: usize = dropped(&metrics).parse().unwrap();
    assert_eq!(written + lost, 400);
    for line in text.lines() {
        serde_json::from_str::<serde_json::Value>(line).unwrap();
    }
}

#[test]
fn off_and_bad_destinations() {
    let metrics = Metrics::new();
    let off = AccessLog::open("off", &metrics).unwrap();
    assert!(!off.is_enabled());
    off.log(&record("1", "h", "/"));
    off.flush();
    assert_eq!(dropped(&metrics), "0");

    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("no/such/dir/access.log");
    assert!(AccessLog::open(missing.to_str().unwrap(), &metrics).is_err());
}

/// A writer whose first write blocks until the test releases it, so the queue backs up
/// deterministically.
struct GatedWriter {
    entered: Option<Sender<()>>,
    release: Arc<Mutex<std::sync::mpsc::Receiver<()>>>,
    sink: Arc<Mutex<Vec<u8>>>,
}

impl Write for GatedWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if let Some(entered) = self.entered.take() {
            entered.send(()).unwrap();
            self.release.lock().unwrap().recv().unwrap();
        }
        self.sink.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[test]
fn full_queue_drops_and_counts() {
    let (entered_tx, entered_rx) = std::sync::mpsc::channel();
    let (release_tx, release_rx) = std::sync::mpsc::channel();
    let sink = Arc::new(Mutex::new(Vec::new()));
    let writer = GatedWriter {
        entered: Some(entered_tx),
        release: Arc::new(Mutex::new(release_rx)),
        sink: Arc::clone(&sink),
    };
    let metrics = Metrics::new();
    let log = AccessLog::with_writer(Box::new(writer), &metrics, 2).unwrap();

    log.log(&record("first", "h", "/"));
    // The writer thread is now stuck inside the destination with the first line.
    entered_rx.recv().unwrap();
    for i in 0..5 {
        log.log(&record(&format!("queued-{i}"), "h", "/"));
    }
    // Two fit in the queue; the other three were dropped without blocking.
    assert_eq!(dropped(&metrics), "3");

    release_tx.send(()).unwrap();
    log.flush();
    let text = String::from_utf8(sink.lock().unwrap().clone()).unwrap();
    let ids: Vec<String> = text
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            v["request_id"].as_str().unwrap().to_owned()
        })
        .collect();
    assert_eq!(ids, ["first", "queued-0", "queued-1"]);
}

#[test]
fn open_accepts_arc_and_reference() {
    let metrics = Arc::new(Metrics::new());
    let a = AccessLog::open("off", Arc::clone(&metrics)).unwrap();
    let b = AccessLog::open("off", &metrics).unwrap();
    let c = AccessLog::open("off", &*metrics).unwrap();
    assert!(!a.is_enabled() && !b.is_enabled() && !c.is_enabled());
    assert!(format!("{a:?}").contains("enabled: false"));
}
