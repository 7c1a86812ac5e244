//! Apache Kafka for the tests and benchmarks: one combined broker+controller
//! node (KRaft) on free loopback ports, run from the jars that Maven resolves
//! for `tests/kafka/pom.xml` (downloaded once, then from Maven's cache).
//!
//! A suite shares one broker ([`shared_broker`], each test with topics of its
//! own); a test that stops, pauses or restarts the broker starts its own
//! ([`Kafka::start`]). Needs `java` (17+) and `mvn` on PATH; without them it
//! fails, saying so (`scripts/install-test-deps.sh` installs both).

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::ClientConfig;

/// A child process killed when dropped.
pub struct Proc(pub Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The broker's classpath: resolved by Maven once, kept in `target/`.
fn classpath() -> String {
    static CP: OnceLock<String> = OnceLock::new();
    CP.get_or_init(|| {
        let pom = repo().join("tests/kafka/pom.xml");
        let cached = repo().join("target/kafka-classpath.txt");
        let fresh = |f: &Path| {
            let (Ok(a), Ok(b)) = (f.metadata(), pom.metadata()) else {
                return false;
            };
            a.modified().unwrap() >= b.modified().unwrap()
        };
        if !fresh(&cached) {
            let tmp = repo().join(format!("target/kafka-classpath.{}.tmp", std::process::id()));
            let out = Command::new("mvn")
                .args(["-q", "-B", "-f"])
                .arg(&pom)
                .arg("dependency:build-classpath")
                .arg(format!("-Dmdep.outputFile={}", tmp.display()))
                .output()
                .unwrap_or_else(|e| {
                    panic!("the tests need Apache Kafka, which Maven resolves, but `mvn` could not run ({e}): install Maven (scripts/install-test-deps.sh does)")
                });
            assert!(
                out.status.success(),
                "Maven could not resolve Apache Kafka from tests/kafka/pom.xml:\n{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            std::fs::rename(&tmp, &cached).unwrap();
        }
        std::fs::read_to_string(&cached).unwrap()
    })
    .clone()
}

fn java() -> Command {
    static CHECKED: OnceLock<()> = OnceLock::new();
    CHECKED.get_or_init(|| {
        let ok = Command::new("java")
            .arg("-version")
            .output()
            .map(|o| o.status.success());
        assert!(
            matches!(ok, Ok(true)),
            "the tests run Apache Kafka, which needs Java 17 or later: `java` is missing ({ok:?}); install a JDK (scripts/install-test-deps.sh does)"
        );
    });
    let mut c = Command::new("java");
    c.arg("-cp").arg(classpath());
    c
}

/// One Apache Kafka node in a folder of its own; killed and removed when dropped.
pub struct Kafka {
    /// In a mutex: a test stops and restarts a broker its stage shares.
    child: std::sync::Mutex<Option<Child>>,
    dir: PathBuf,
    pub port: u16,
}

impl Kafka {
    /// Formats a new storage folder and starts the node; returns once it answers metadata.
    pub fn start() -> Kafka {
        Self::start_in(&std::env::temp_dir())
    }

    /// [`Kafka::start`] with its folder in `root`.
    pub fn start_in(root: &Path) -> Kafka {
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        remove_folders_of_ended_runs(root);
        let dir = root.join(format!(
            "gmv-kafka-{}-{}",
            std::process::id(),
            N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        std::fs::remove_dir_all(&dir).ok();
        std::fs::create_dir_all(&dir).unwrap();
        let (port, controller_port) = (free_port(), free_port());
        let props = format!(
            "process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:{controller_port}
listeners=PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller_port}
advertised.listeners=PLAINTEXT://127.0.0.1:{port}
controller.listener.names=CONTROLLER
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
inter.broker.listener.name=PLAINTEXT
log.dirs={data}
auto.create.topics.enable=false
offsets.topic.replication.factor=1
offsets.topic.num.partitions=4
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=4
group.initial.rebalance.delay.ms=0
",
            data = dir.join("data").display()
        );
        std::fs::write(dir.join("server.properties"), props).unwrap();
        let out = Self::jvm(&dir)
            .args([
                "kafka.tools.StorageTool",
                "format",
                "-t",
                "MkU3OEVBNTcwNTJENDM2Qg",
                "-c",
            ])
            .arg(dir.join("server.properties"))
            .output()
            .expect("running Kafka's StorageTool");
        assert!(
            out.status.success(),
            "formatting Kafka's storage failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let k = Kafka {
            child: std::sync::Mutex::new(None),
            dir,
            port,
        };
        k.restart();
        k
    }

    fn jvm(dir: &Path) -> Command {
        let mut c = java();
        c.arg(format!(
            "-Dlog4j2.configurationFile={}",
            repo().join("tests/kafka/log4j2.properties").display()
        ))
        .arg(format!("-Dkafka.logs.dir={}", dir.display()));
        c
    }

    pub fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Starts the node (again) on its folder and ports; returns once it answers metadata.
    pub fn restart(&self) {
        assert!(self.child().is_none(), "the broker runs already");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("stdout.log"))
            .unwrap();
        let mut cmd = Self::jvm(&self.dir);
        // C1 only: a broker started for a test or a bench spent about half of
        // its CPU in C2, the JIT's optimizing compiler, through six 4 M-record
        // jobs on 2 cores (about 1,700 methods queued for one compiler thread),
        // each job on a faster broker than the one before. Compiled by C1 alone,
        // it costs the end-to-end bench's job less than half as much CPU from
        // the first job on, and the same in every job (docs/performance.md).
        cmd.args([
            "-Xms256m",
            "-Xmx1g",
            "-XX:+UseG1GC",
            "-XX:TieredStopAtLevel=1",
            "kafka.Kafka",
        ])
        .arg(self.dir.join("server.properties"))
        .stdout(Stdio::from(log.try_clone().unwrap()))
        .stderr(Stdio::from(log));
        // The broker must not outlive the test process, even one that is killed.
        // SAFETY: prctl is async-signal-safe.
        unsafe {
            use std::os::unix::process::CommandExt;
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        *self.child() = Some(cmd.spawn().expect("starting Apache Kafka"));
        self.wait_ready(Duration::from_secs(90));
    }

    /// The node's process id (benchmarks read its CPU time).
    pub fn pid(&self) -> u32 {
        self.child().as_ref().expect("the broker runs").id()
    }

    fn child(&self) -> std::sync::MutexGuard<'_, Option<Child>> {
        self.child.lock().unwrap()
    }

    fn wait_ready(&self, within: Duration) {
        let deadline = Instant::now() + within;
        let c: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", self.bootstrap())
            .set("log_level", "0")
            .create()
            .unwrap();
        loop {
            if let Some(status) = self.child().as_mut().unwrap().try_wait().unwrap() {
                panic!(
                    "Apache Kafka exited at start ({status}); its log: {}",
                    self.dir.join("server.log").display()
                );
            }
            if c.fetch_metadata(None, Duration::from_secs(1))
                .is_ok_and(|m| !m.brokers().is_empty())
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "Apache Kafka did not answer on port {} within {within:?}; its log: {}",
                self.port,
                self.dir.join("server.log").display()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn signal(&self, sig: &str) {
        let pid = self.pid();
        let ok = Command::new("kill")
            .args([sig, &pid.to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill {sig} of the broker failed");
    }

    /// Stops the node cleanly (SIGTERM) and waits for it to exit.
    pub fn stop(&self) {
        self.signal("-TERM");
        let child = self.child().take();
        child.unwrap().wait().unwrap();
    }

    /// SIGSTOP: the node stops answering, connections stay open.
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    /// SIGCONT after [`Kafka::pause`].
    pub fn resume(&self) {
        self.signal("-CONT");
    }

    /// The node's log (warnings and the coordinators' decisions).
    pub fn log(&self) -> PathBuf {
        self.dir.join("server.log")
    }
}

impl Drop for Kafka {
    fn drop(&mut self) {
        if let Some(mut c) = self.child().take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        if !std::thread::panicking() {
            std::fs::remove_dir_all(&self.dir).ok();
        } else {
            eprintln!("the broker's folder is kept: {}", self.dir.display());
        }
    }
}

/// Removes the folders of brokers whose test process has ended (a shared
/// broker's folder outlives its process: nothing runs at exit to remove it).
fn remove_folders_of_ended_runs(root: &Path) {
    let Ok(entries) = std::fs::read_dir(root) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix("gmv-kafka-")
            .and_then(|r| r.split('-').next())
        else {
            continue;
        };
        if !Path::new("/proc").join(pid).exists() {
            std::fs::remove_dir_all(e.path()).ok();
        }
    }
}

/// The broker every test of this process shares: started on first use, killed
/// when the process ends (the thread that started it waits on it for good, so
/// the parent-death signal fires only then).
pub fn shared_broker() -> &'static str {
    static ADDR: OnceLock<String> = OnceLock::new();
    ADDR.get_or_init(|| {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name("kafka-broker".into())
            .spawn(move || {
                let k = Kafka::start();
                tx.send(k.bootstrap()).unwrap();
                let status = k.child().as_mut().unwrap().wait();
                eprintln!("the shared Apache Kafka exited: {status:?}");
            })
            .unwrap();
        rx.recv()
            .expect("the shared Apache Kafka did not start (see the panic above)")
    })
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

/// A benchmark's start: its own broker, a temporary folder, a job config there
/// (`bench_config`) and the job's topics with `partitions` partitions. Returns
/// the broker (stopped when dropped), its bootstrap address, the folder and the
/// config's path.
pub fn bench_setup(name: &str, partitions: i32) -> (Kafka, String, PathBuf, PathBuf) {
    let broker = Kafka::start_in(&bench_broker_root());
    let brokers = broker.bootstrap();
    let dir = std::env::temp_dir().join(format!("gmv-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (config, _) = bench_config(&dir, &brokers, &format!("gmv-{name}"));
    create_topics(&config, partitions);
    (broker, brokers, dir, config)
}

/// Where a benchmark's broker keeps its data: in memory (`/dev/shm`) where
/// the machine has it. On disk the kernel wrote a bench's gigabytes back in
/// bursts, 30 s after they came, and the job measured meanwhile saw its
/// commits take 400–900 ms instead of about 80 (docs/performance.md): a
/// measure of this VM's disk, not of the job, and not of the do-nothing
/// consumer it is compared with, which writes nothing.
pub fn bench_broker_root() -> PathBuf {
    let shm = Path::new("/dev/shm");
    if shm.is_dir() {
        shm.to_path_buf()
    } else {
        std::env::temp_dir()
    }
}

/// A `read_committed` reader of a `gmv-totals` topic (6 partitions), from its
/// end: what a screen sees from now on.
pub fn totals_tail(brokers: &str, topic: &str, group: &str) -> BaseConsumer {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", group)
        .set("isolation.level", "read_committed")
        .set("fetch.wait.max.ms", "10")
        .create()
        .unwrap();
    let mut tpl = rdkafka::TopicPartitionList::new();
    for p in 0..6 {
        tpl.add_partition_offset(topic, p, rdkafka::Offset::End)
            .unwrap();
    }
    c.assign(&tpl).unwrap();
    c
}

/// A number from the environment, or `default`.
pub fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

/// Writes a job config for a benchmark (the defaults but the broker, group and
/// metrics port) and returns its path and the metrics port.
pub fn bench_config(dir: &std::path::Path, brokers: &str, group: &str) -> (PathBuf, u16) {
    let metrics_port = free_port();
    let config = dir.join("gmv.toml");
    std::fs::write(
        &config,
        format!(
            "[kafka]\nbrokers = \"{brokers}\"\ngroup_id = \"{group}\"\n[metrics]\nlisten = \"127.0.0.1:{metrics_port}\"\n"
        ),
    )
    .unwrap();
    (config, metrics_port)
}
