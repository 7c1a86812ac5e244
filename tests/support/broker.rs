//! A Tansu broker process for tests and benchmarks: found on PATH, in
//! ~/.cargo/bin or at TANSU_BIN, started on a free loopback port with
//! in-memory storage, killed on drop.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A child process killed when dropped.
pub struct Proc(pub Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub fn tansu_binary() -> PathBuf {
    if let Ok(p) = std::env::var("TANSU_BIN") {
        return PathBuf::from(p);
    }
    let home = std::env::var("HOME").unwrap_or_default();
    std::env::var("PATH")
        .unwrap_or_default()
        .split(':')
        .map(|d| PathBuf::from(d).join("tansu"))
        .chain([PathBuf::from(home).join(".cargo/bin/tansu")])
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!("this needs the Tansu broker: install it with `cargo install tansu --locked --features dynostore` (as .ci/run does) or set TANSU_BIN")
        })
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Starts Tansu and returns it with its bootstrap address once it accepts connections.
/// With TANSU_LOG=<file> its log goes there (appended), filtered by TANSU_LOG_FILTER
/// (default `warn`), for debugging the broker's side of a test.
pub fn start_broker() -> (Proc, String) {
    let port = free_port();
    let url = format!("tcp://127.0.0.1:{port}");
    let log = || match std::env::var_os("TANSU_LOG") {
        Some(path) => Stdio::from(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
                .expect("opening TANSU_LOG"),
        ),
        None => Stdio::null(),
    };
    let child = Command::new(tansu_binary())
        .args([
            "broker",
            "--storage-engine",
            "memory://tansu/",
            "--listener-url",
            &url,
            "--advertised-listener-url",
            &url,
        ])
        .env(
            "RUST_LOG",
            std::env::var("TANSU_LOG_FILTER").unwrap_or("warn".into()),
        )
        .stdout(log())
        .stderr(log())
        .spawn()
        .expect("starting tansu");
    wait_for_port(port, Duration::from_secs(30), "tansu");
    (Proc(child), format!("127.0.0.1:{port}"))
}

/// Waits until something accepts connections on a loopback port.
pub fn wait_for_port(port: u16, within: Duration, what: &str) {
    let deadline = Instant::now() + within;
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "{what} did not listen on port {port} within {within:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Fetches a URL path from a loopback HTTP server (no client crate needed).
pub fn http_get(port: u16, path: &str) -> String {
    try_http_get(port, path).expect("connect")
}

/// [`http_get`], `None` when nothing listens on the port (yet).
pub fn try_http_get(port: u16, path: &str) -> Option<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut body = String::new();
    s.read_to_string(&mut body).ok();
    Some(
        body.split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())
            .unwrap_or_default(),
    )
}

/// Sum of a Prometheus counter's samples (all label sets) in a /metrics text.
pub fn metric_sum(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Runs `gmv topics` with `config`, the input topics having `partitions` each.
pub fn create_topics(config: &std::path::Path, partitions: i32) {
    let status = Command::new(env!("CARGO_BIN_EXE_gmv"))
        .args(["topics", "--config"])
        .arg(config)
        .args(["--partitions", &partitions.to_string()])
        .status()
        .expect("running gmv topics");
    assert!(status.success(), "gmv topics failed");
}

/// Writes a job config for a benchmark against Tansu (no EndTxn, so no broker
/// transactions; short fetch waits; a heartbeat fast enough for its group
/// coordinator, see docs/testing.md) and returns its path and the metrics port.
pub fn bench_config(dir: &std::path::Path, brokers: &str, group: &str) -> (PathBuf, u16) {
    let metrics_port = free_port();
    let config = dir.join("gmv.toml");
    std::fs::write(
        &config,
        format!(
            "[kafka]\nbrokers = \"{brokers}\"\ngroup_id = \"{group}\"\ntransactions = false\n[kafka.consumer_properties]\n\"fetch.wait.max.ms\" = \"20\"\n\"session.timeout.ms\" = \"10000\"\n\"heartbeat.interval.ms\" = \"500\"\n[metrics]\nlisten = \"127.0.0.1:{metrics_port}\"\n"
        ),
    )
    .unwrap();
    (config, metrics_port)
}
