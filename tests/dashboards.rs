//! Every Grafana query returns data from a real Prometheus scraping the real
//! job while traffic flows.
//!
//! The test runs `gmv demo` (embedded Kafka mock broker, traffic generator and
//! the job, no external service) and a real Prometheus that scrapes the job's
//! /metrics every second and loads grafana/prometheus/alerts.yml. Once the target is up
//! and traffic has flowed long enough for rate()[1m] to have samples, it
//! evaluates every `expr` of grafana/dashboards/*.json (panel targets, nested
//! rows, annotation queries) as an instant query and requires valid PromQL and
//! at least one sample with a numeric (non-NaN) value. A short list of panels
//! may be empty, each only when a second query proves the reason (see
//! `ALLOWED_EMPTY`). It also checks that Prometheus loaded the `gmv` rule group
//! with every rule of alerts.yml and that every rule evaluates without error.
//!
//! Needs Prometheus (Debian package `prometheus`, /usr/bin/prometheus; or set
//! PROMETHEUS_BIN). Without it the test fails, saying so.

use std::collections::BTreeSet;
use std::fs::{self, File};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::Value;

/// Demo input rate (records per second).
const RATE: u32 = 20_000;
/// Minimum time traffic flows (from the demo's start) before the queries run.
const MIN_TRAFFIC: Duration = Duration::from_secs(75);
/// Up to this long from the demo's start, wait for the first milestone, so the
/// milestone panels are normally checked for data rather than allowed empty.
const MAX_TRAFFIC: Duration = Duration::from_secs(120);
/// The demo stops by itself after this long, in case the test is killed.
const DEMO_SECONDS: u64 = 300;

/// Panels and annotations that may return no data in a short demo run, each
/// only while `proof` (a PromQL query) returns a sample, i.e. the reason holds.
struct AllowedEmpty {
    dashboard: &'static str,
    /// Panel title, or annotation name.
    panel: &'static str,
    reason: &'static str,
    proof: &'static str,
}

const ALLOWED_EMPTY: &[AllowedEmpty] = &[
    AllowedEmpty {
        dashboard: "big-screen.json",
        panel: "Pay to delivery",
        reason: "no delivery has been observed yet (deliveries come minutes later in event time), so the quantiles of gmv_pay_to_delivery_seconds are NaN",
        proof: "sum(gmv_pay_to_delivery_seconds_count) == 0",
    },
    AllowedEmpty {
        dashboard: "big-screen.json",
        panel: "Recent milestones",
        reason: "no milestone has been emitted yet",
        proof: "sum(gmv_milestones_total) == 0",
    },
    AllowedEmpty {
        dashboard: "big-screen.json",
        panel: "Milestones",
        reason: "no milestone has been emitted yet",
        proof: "sum(gmv_milestones_total) == 0",
    },
    AllowedEmpty {
        dashboard: "big-screen.json",
        panel: "Milestones (count)",
        reason: "no milestone has been emitted yet",
        proof: "sum(gmv_milestones_total) == 0",
    },
];

// ---------------------------------------------------------------------------
// Processes and files
// ---------------------------------------------------------------------------

/// The demo and Prometheus; killed, and the temp dir removed, on drop.
struct Stack {
    dir: PathBuf,
    demo: Option<Child>,
    prometheus: Option<Child>,
    demo_started: Instant,
    prom_port: u16,
}

impl Drop for Stack {
    fn drop(&mut self) {
        for child in [self.demo.as_mut(), self.prometheus.as_mut()]
            .into_iter()
            .flatten()
        {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            eprintln!("logs kept in {}", self.dir.display());
        } else {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}

impl Stack {
    /// Last lines of both processes' logs, for failure messages.
    fn logs(&self) -> String {
        let mut s = String::new();
        for name in ["demo.out", "demo.err", "prometheus.log"] {
            let text = fs::read_to_string(self.dir.join(name)).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            let tail = &lines[lines.len().saturating_sub(15)..];
            s.push_str(&format!("\n--- {name} (last {} lines)\n", tail.len()));
            for l in tail {
                s.push_str(l);
                s.push('\n');
            }
        }
        s
    }

    /// Panics, with the logs, if either process has exited.
    fn assert_running(&mut self) {
        let mut dead = Vec::new();
        for (name, child) in [
            ("gmv demo", &mut self.demo),
            ("prometheus", &mut self.prometheus),
        ] {
            if let Some(c) = child.as_mut() {
                if let Ok(Some(status)) = c.try_wait() {
                    dead.push(format!("{name} exited early: {status}"));
                }
            }
        }
        if !dead.is_empty() {
            panic!("{}{}", dead.join("; "), self.logs());
        }
    }

    /// Evaluates `expr` now; panics (with logs) on a transport error.
    fn query(&self, expr: &str) -> QueryResult {
        let path = format!("/api/v1/query?query={}", url_encode(expr));
        match http_get(self.prom_port, &path) {
            Ok((status, body)) => QueryResult {
                http_status: status,
                json: serde_json::from_str(&body).unwrap_or(Value::Null),
                body,
            },
            Err(e) => panic!("query {expr:?}: {e}{}", self.logs()),
        }
    }

    /// The result vector of a query that must succeed.
    fn samples(&self, expr: &str) -> Vec<Value> {
        let r = self.query(expr);
        assert!(
            r.ok(),
            "query {expr:?} failed: {}{}",
            r.problem(),
            self.logs()
        );
        r.samples()
    }

    /// The single value of a query that must return exactly one sample.
    fn scalar(&self, expr: &str) -> f64 {
        let s = self.samples(expr);
        assert_eq!(s.len(), 1, "query {expr:?}: want one sample, got {s:?}");
        sample_value(&s[0])
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .expect("bind a loopback port")
        .local_addr()
        .expect("local address")
        .port()
}

fn prometheus_binary() -> PathBuf {
    if let Ok(p) = std::env::var("PROMETHEUS_BIN") {
        return PathBuf::from(p);
    }
    let on_path = std::env::var("PATH")
        .unwrap_or_default()
        .split(':')
        .map(|d| PathBuf::from(d).join("prometheus"))
        .collect::<Vec<_>>();
    std::iter::once(PathBuf::from("/usr/bin/prometheus"))
        .chain(on_path)
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "the dashboards test needs Prometheus (2.42, binary /usr/bin/prometheus): \
                 install it with `sudo apt-get install prometheus` (Debian/Ubuntu package) \
                 or set PROMETHEUS_BIN to a prometheus binary"
            )
        })
}

fn temp_dir() -> PathBuf {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let dir = std::env::temp_dir().join(format!("gmv-dashboards-{}-{nanos}", std::process::id()));
    fs::create_dir_all(dir.join("tsdb")).expect("create temp dir");
    dir
}

fn log_file(dir: &Path, name: &str) -> File {
    File::create(dir.join(name)).expect("create log file")
}

fn start_stack() -> Stack {
    let prometheus = prometheus_binary();
    let version = Command::new(&prometheus)
        .arg("--version")
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", prometheus.display()));
    let version = String::from_utf8_lossy(&version.stdout);
    println!(
        "using {} ({})",
        prometheus.display(),
        version.lines().next().unwrap_or("?").trim()
    );

    let dir = temp_dir();
    let metrics_port = free_port();
    let prom_port = free_port();
    let rules = Path::new(env!("CARGO_MANIFEST_DIR")).join("grafana/prometheus/alerts.yml");
    assert!(rules.is_file(), "{} missing", rules.display());
    let config = format!(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
         rule_files:\n  - {rules:?}\n\
         scrape_configs:\n  - job_name: gmv\n    static_configs:\n      - targets: ['127.0.0.1:{metrics_port}']\n",
        rules = rules.display().to_string(),
    );
    let config_path = dir.join("prometheus.yml");
    fs::write(&config_path, config).expect("write prometheus.yml");

    let demo = Command::new(env!("CARGO_BIN_EXE_gmv"))
        .args([
            "demo",
            "--seconds",
            &DEMO_SECONDS.to_string(),
            "--metrics-listen",
            &format!("127.0.0.1:{metrics_port}"),
            "--rate",
            &RATE.to_string(),
        ])
        .stdin(Stdio::null())
        .stdout(log_file(&dir, "demo.out"))
        .stderr(log_file(&dir, "demo.err"))
        .spawn()
        .expect("start gmv demo");
    let demo_started = Instant::now();
    let mut stack = Stack {
        dir: dir.clone(),
        demo: Some(demo),
        prometheus: None,
        demo_started,
        prom_port,
    };
    let tsdb = dir.join("tsdb");
    let prom_log = log_file(&dir, "prometheus.log");
    let prom = Command::new(&prometheus)
        .arg("--config.file")
        .arg(&config_path)
        .arg("--storage.tsdb.path")
        .arg(&tsdb)
        .arg("--web.listen-address")
        .arg(format!("127.0.0.1:{prom_port}"))
        .current_dir(&dir)
        .stdin(Stdio::null())
        .stdout(prom_log.try_clone().expect("clone log file"))
        .stderr(prom_log)
        .spawn()
        .unwrap_or_else(|e| panic!("start {}: {e}", prometheus.display()));
    stack.prometheus = Some(prom);
    println!(
        "gmv demo on :{metrics_port} (rate {RATE}/s), prometheus on :{prom_port}, files in {}",
        dir.display()
    );
    stack
}

// ---------------------------------------------------------------------------
// HTTP (a minimal blocking HTTP/1.1 GET) and Prometheus API results
// ---------------------------------------------------------------------------

/// Percent-encodes everything but RFC 3986 unreserved characters.
fn url_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// GET `path` from 127.0.0.1:`port`; returns the status code and the body.
fn http_get(port: u16, path: &str) -> Result<(u16, String), String> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())?;
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .map_err(|e| e.to_string())?;
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAccept: application/json\r\nConnection: close\r\n\r\n"
    );
    stream
        .write_all(request.as_bytes())
        .map_err(|e| e.to_string())?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).map_err(|e| e.to_string())?;
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or("no end of headers in the response")?;
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut body = raw[split + 4..].to_vec();
    let mut lines = head.lines();
    let status: u16 = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("bad status line in {head:?}"))?;
    let header = |name: &str| {
        head.lines().skip(1).find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_ascii_lowercase())
        })
    };
    if header("transfer-encoding").is_some_and(|v| v.contains("chunked")) {
        body = dechunk(&body)?;
    } else if let Some(len) = header("content-length").and_then(|v| v.parse::<usize>().ok()) {
        body.truncate(len);
    }
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

fn dechunk(mut data: &[u8]) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    loop {
        let eol = data
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or("truncated chunk size")?;
        let size_text = String::from_utf8_lossy(&data[..eol]);
        let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
            .map_err(|e| format!("bad chunk size {size_text:?}: {e}"))?;
        data = &data[eol + 2..];
        if size == 0 {
            return Ok(out);
        }
        if data.len() < size + 2 {
            return Err("truncated chunk".into());
        }
        out.extend_from_slice(&data[..size]);
        data = &data[size + 2..];
    }
}

struct QueryResult {
    http_status: u16,
    json: Value,
    body: String,
}

impl QueryResult {
    fn ok(&self) -> bool {
        self.http_status == 200 && self.json["status"] == "success"
    }

    fn problem(&self) -> String {
        format!(
            "HTTP {}, status {}, {}: {}",
            self.http_status,
            self.json["status"],
            self.json["errorType"],
            if self.json["error"].is_string() {
                self.json["error"].as_str().unwrap_or_default().to_string()
            } else {
                self.body.chars().take(300).collect()
            }
        )
    }

    /// Samples of a vector result; a scalar result counts as one sample.
    fn samples(&self) -> Vec<Value> {
        let data = &self.json["data"];
        match data["resultType"].as_str() {
            Some("vector") | Some("matrix") => {
                data["result"].as_array().cloned().unwrap_or_default()
            }
            Some("scalar") => vec![serde_json::json!({ "metric": {}, "value": data["result"] })],
            _ => Vec::new(),
        }
    }
}

fn sample_value(sample: &Value) -> f64 {
    match sample["value"][1].as_str() {
        Some("NaN") | None => f64::NAN,
        Some("+Inf") => f64::INFINITY,
        Some("-Inf") => f64::NEG_INFINITY,
        Some(v) => v.parse().unwrap_or(f64::NAN),
    }
}

// ---------------------------------------------------------------------------
// Dashboards
// ---------------------------------------------------------------------------

/// One query of a dashboard: a panel target or an annotation.
struct DashQuery {
    dashboard: String,
    /// Panel title or annotation name.
    panel: String,
    /// "panel 12 target A" or "annotation".
    place: String,
    expr: String,
}

fn collect_panels(dashboard: &str, panels: &Value, out: &mut Vec<DashQuery>) {
    for p in panels.as_array().into_iter().flatten() {
        let title = p["title"].as_str().unwrap_or("(untitled)");
        for t in p["targets"].as_array().into_iter().flatten() {
            if let Some(expr) = t["expr"].as_str() {
                out.push(DashQuery {
                    dashboard: dashboard.to_string(),
                    panel: title.to_string(),
                    place: format!(
                        "panel {} target {}",
                        p["id"],
                        t["refId"].as_str().unwrap_or("?")
                    ),
                    expr: expr.to_string(),
                });
            }
        }
        // Rows (collapsed or not) and library panels nest their panels.
        collect_panels(dashboard, &p["panels"], out);
    }
}

/// Every `expr` string anywhere in the JSON, to make sure none is missed.
fn count_exprs(v: &Value) -> usize {
    match v {
        Value::Object(m) => m
            .iter()
            .map(|(k, v)| usize::from(k == "expr" && v.is_string()) + count_exprs(v))
            .sum(),
        Value::Array(a) => a.iter().map(count_exprs).sum(),
        _ => 0,
    }
}

fn dashboard_queries() -> Vec<DashQuery> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("grafana/dashboards");
    let mut files: Vec<PathBuf> = fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    files.sort();
    assert!(
        files.len() >= 2,
        "want both dashboards in {}",
        dir.display()
    );
    let mut all = Vec::new();
    for path in files {
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let text = fs::read_to_string(&path).expect("read dashboard");
        let dash: Value =
            serde_json::from_str(&text).unwrap_or_else(|e| panic!("{name}: invalid JSON: {e}"));
        let mut queries = Vec::new();
        for a in dash["annotations"]["list"].as_array().into_iter().flatten() {
            if let Some(expr) = a["expr"].as_str() {
                queries.push(DashQuery {
                    dashboard: name.clone(),
                    panel: a["name"].as_str().unwrap_or("(unnamed)").to_string(),
                    place: "annotation".into(),
                    expr: expr.to_string(),
                });
            }
        }
        collect_panels(&name, &dash["panels"], &mut queries);
        assert_eq!(
            queries.len(),
            count_exprs(&dash),
            "{name}: some `expr` is neither a panel target nor an annotation query; extend the test"
        );
        assert!(!queries.is_empty(), "{name}: no queries");
        all.extend(queries);
    }
    all
}

/// Replaces Grafana's built-in variables by what they mean at a 1 s scrape
/// interval; panics on any other variable (the dashboards define none).
fn instantiate(q: &DashQuery) -> String {
    let mut e = q.expr.clone();
    for (var, value) in [
        ("${__rate_interval}", "1m"),
        ("$__rate_interval", "1m"),
        ("${__interval}", "15s"),
        ("$__interval", "15s"),
        ("${__range}", "1m"),
        ("$__range", "1m"),
    ] {
        e = e.replace(var, value);
    }
    assert!(
        !e.contains('$'),
        "{} {} {:?}: unknown Grafana variable in {:?}",
        q.dashboard,
        q.place,
        q.panel,
        q.expr
    );
    e
}

// ---------------------------------------------------------------------------
// The test
// ---------------------------------------------------------------------------

/// Alert names of grafana/prometheus/alerts.yml (lines `- alert: Name`).
fn alert_names() -> BTreeSet<String> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("grafana/prometheus/alerts.yml");
    fs::read_to_string(&path)
        .expect("read alerts.yml")
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- alert:"))
        .map(|n| n.trim().trim_matches(|c| c == '"' || c == '\'').to_string())
        .collect()
}

#[test]
fn every_dashboard_query_returns_data_from_prometheus() {
    let started = Instant::now();
    let queries = dashboard_queries();
    // Every allowed-empty entry names a query that exists, so the list cannot rot.
    for a in ALLOWED_EMPTY {
        assert!(
            queries
                .iter()
                .any(|q| q.dashboard == a.dashboard && q.panel == a.panel),
            "ALLOWED_EMPTY names {} {:?}, which has no query any more",
            a.dashboard,
            a.panel
        );
    }
    let mut stack = start_stack();

    // 1. Prometheus is ready and scrapes the job.
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        stack.assert_running();
        let up = http_get(
            stack.prom_port,
            &format!("/api/v1/query?query={}", url_encode("up{job=\"gmv\"}")),
        )
        .ok()
        .filter(|(status, _)| *status == 200)
        .and_then(|(_, body)| serde_json::from_str::<Value>(&body).ok())
        .and_then(|v| {
            v["data"]["result"][0]["value"][1]
                .as_str()
                .map(String::from)
        });
        if up.as_deref() == Some("1") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "Prometheus did not report up{{job=\"gmv\"}} == 1 within 90 s (last: {up:?}){}",
            stack.logs()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    println!(
        "target up {:.0} s after the demo started",
        stack.demo_started.elapsed().as_secs_f64()
    );

    // 2. Traffic flows: at least MIN_TRAFFIC, and until the first milestone (up to MAX_TRAFFIC).
    loop {
        stack.assert_running();
        let elapsed = stack.demo_started.elapsed();
        if elapsed >= MIN_TRAFFIC {
            let milestones = stack.samples("sum(gmv_milestones_total) > 0");
            if !milestones.is_empty() || elapsed >= MAX_TRAFFIC {
                break;
            }
        }
        std::thread::sleep(Duration::from_secs(1));
    }
    let scrapes = stack.scalar("count_over_time(up{job=\"gmv\"}[1m])");
    assert!(
        scrapes >= 2.0,
        "only {scrapes} scrapes in the last minute: rate()[1m] needs 2{}",
        stack.logs()
    );
    assert_eq!(
        stack.scalar("min_over_time(up{job=\"gmv\"}[1m])"),
        1.0,
        "the job was not up for the whole last minute{}",
        stack.logs()
    );
    let read = stack.scalar("sum(increase(gmv_events_read_total[1m]))");
    assert!(
        read > 0.0,
        "no input read in the last minute: no traffic{}",
        stack.logs()
    );
    println!(
        "traffic for {:.0} s: {scrapes} scrapes and {read:.0} input records in the last minute, \
         {} milestones",
        stack.demo_started.elapsed().as_secs_f64(),
        stack.scalar("sum(gmv_milestones_total)")
    );

    // 3. Every dashboard query: valid PromQL and data (or an allowed, proven reason).
    let mut failures = Vec::new();
    let mut allowed = Vec::new();
    let mut with_data = 0;
    for q in &queries {
        let expr = instantiate(q);
        let r = stack.query(&expr);
        let what = format!("{} {} {:?}: {expr}", q.dashboard, q.place, q.panel);
        if !r.ok() {
            failures.push(format!("{what}\n      invalid: {}", r.problem()));
            continue;
        }
        let samples = r.samples();
        let numeric = samples.iter().filter(|s| !sample_value(s).is_nan()).count();
        if numeric > 0 {
            with_data += 1;
            println!("  ok    {what}  ({} series)", samples.len());
            continue;
        }
        let seen = if samples.is_empty() {
            "empty result".to_string()
        } else {
            format!("{} series, all NaN", samples.len())
        };
        match ALLOWED_EMPTY
            .iter()
            .find(|a| a.dashboard == q.dashboard && a.panel == q.panel)
        {
            Some(a) if !stack.samples(a.proof).is_empty() => {
                println!("  empty {what}  ({seen}) allowed: {}", a.reason);
                allowed.push(format!(
                    "{} {:?} ({}): {} [proof: `{}` holds]",
                    q.dashboard, q.panel, q.place, a.reason, a.proof
                ));
            }
            Some(a) => failures.push(format!(
                "{what}\n      no data ({seen}), and the reason it may be empty does not hold: \
                 `{}` returns nothing",
                a.proof
            )),
            None => failures.push(format!("{what}\n      no data ({seen})")),
        }
    }

    // 4. The alert rules are loaded and evaluate without error.
    let (status, body) = http_get(stack.prom_port, "/api/v1/rules")
        .unwrap_or_else(|e| panic!("/api/v1/rules: {e}{}", stack.logs()));
    assert_eq!(status, 200, "/api/v1/rules: {body}");
    let rules: Value = serde_json::from_str(&body).expect("rules JSON");
    let groups = rules["data"]["groups"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let group = groups
        .iter()
        .find(|g| g["name"] == "gmv")
        .unwrap_or_else(|| panic!("no rule group gmv loaded: {body}{}", stack.logs()));
    let loaded: BTreeSet<String> = group["rules"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|r| r["name"].as_str().map(String::from))
        .collect();
    let expected = alert_names();
    assert!(!expected.is_empty(), "no `- alert:` in alerts.yml");
    if loaded != expected {
        failures.push(format!(
            "rule group gmv has {loaded:?}, alerts.yml defines {expected:?}"
        ));
    }
    for r in group["rules"].as_array().into_iter().flatten() {
        if r["health"] != "ok" {
            failures.push(format!(
                "rule {} health {} ({})",
                r["name"], r["health"], r["lastError"]
            ));
        }
    }
    stack.assert_running();

    println!(
        "\n{} dashboard queries: {with_data} with data, {} allowed empty, {} failed; \
         rule group gmv: {} rules loaded; {:.0} s",
        queries.len(),
        allowed.len(),
        failures.len(),
        loaded.len(),
        started.elapsed().as_secs_f64()
    );
    for a in &allowed {
        println!("allowed empty: {a}");
    }
    assert!(
        failures.is_empty(),
        "{} problem(s):\n  {}",
        failures.len(),
        failures.join("\n  ")
    );
}
