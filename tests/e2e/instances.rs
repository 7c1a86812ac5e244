//! The job's processes in the end-to-end tests: `gmv run` started as one
//! instance or as a group of them (`Instances`), with their logs, stopped
//! cleanly, killed or signalled.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use rdkafka::consumer::Consumer;

use crate::harness::{gmv, reader, Stage, PARTITIONS};
use crate::support::broker::{free_port, metric_sum, try_http_get, Proc};

pub(crate) fn start_job(config: &std::path::Path) -> Proc {
    start_instance(config, "0", None, None)
}

/// Starts `gmv run` as instance `id`; `metrics_port` overrides the config's.
/// Its log goes to the test's stderr, or is added to `log`.
pub(crate) fn start_instance(
    config: &std::path::Path,
    id: &str,
    metrics_port: Option<u16>,
    log: Option<&std::path::Path>,
) -> Proc {
    let mut cmd = gmv();
    cmd.args(["run", "--instance-id", id, "--config"])
        .arg(config);
    if let Some(port) = metrics_port {
        cmd.args(["--metrics-listen", &format!("127.0.0.1:{port}")]);
    }
    let stderr = match log {
        Some(path) => Stdio::from(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .expect("opening the instance's log"),
        ),
        None => Stdio::inherit(),
    };
    Proc(cmd.stderr(stderr).spawn().expect("starting gmv run"))
}

/// Every thread's stack of a running process, from gdb: a job that stopped
/// making progress shows there what it waits for (its log stops at the wait).
fn thread_stacks(pid: u32) -> String {
    let out = Command::new("timeout")
        .args(["60", "gdb", "-p", &pid.to_string(), "-batch", "-nx"])
        .args([
            "-ex",
            "set print frame-arguments none",
            "-ex",
            "thread apply all bt 25",
        ])
        .stdin(Stdio::null())
        .output();
    match out {
        Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout)
            .lines()
            .filter(|l| l.starts_with('#') || l.starts_with("Thread "))
            .collect::<Vec<_>>()
            .join("\n"),
        Ok(o) => format!(
            "gdb could not read them ({}): {}",
            o.status,
            String::from_utf8_lossy(&o.stderr)
        ),
        Err(e) => {
            format!("no gdb to read them ({e}): install gdb for the stacks of a job that stopped")
        }
    }
}

/// The last `n` lines of a log, without the milestone lines (one per milestone
/// after every restore) that would crowd out what went wrong.
pub(crate) fn log_tail(path: &std::path::Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text
        .lines()
        .filter(|l| !l.contains("gmv::app: milestone"))
        .collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Waits up to `within` for `job` to exit; panics with `still_runs()` if it has not.
pub(crate) fn wait_for_exit(
    job: &mut Proc,
    within: Duration,
    still_runs: impl Fn() -> String,
) -> std::process::ExitStatus {
    let deadline = Instant::now() + within;
    loop {
        if let Some(status) = job.0.try_wait().unwrap() {
            return status;
        }
        assert!(Instant::now() < deadline, "{}", still_runs());
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// SIGTERM: the instance commits, leaves the group and exits 0.
pub(crate) fn stop_cleanly(mut job: Proc, id: &str) {
    Command::new("kill")
        .args(["-TERM", &job.0.id().to_string()])
        .status()
        .unwrap();
    assert!(
        job.0.wait().unwrap().success(),
        "instance {id} did not stop cleanly"
    );
}

/// Instances of the job in one group, by slot, with their metrics ports.
pub(crate) struct Instances<'a> {
    stage: &'a Stage,
    pub(crate) ids: Vec<&'static str>,
    pub(crate) jobs: Vec<Option<Proc>>,
    pub(crate) ports: Vec<u16>,
}

impl<'a> Instances<'a> {
    pub(crate) fn new(stage: &'a Stage, ids: &[&'static str]) -> Self {
        Instances {
            stage,
            ids: ids.to_vec(),
            jobs: ids.iter().map(|_| None).collect(),
            ports: ids.iter().map(|_| free_port()).collect(),
        }
    }

    /// One instance, `a`, started and owning every task: where most fault
    /// tests begin.
    pub(crate) fn one_running(stage: &'a Stage) -> Self {
        let mut one = Instances::new(stage, &["a"]);
        one.start(0);
        one.wait_until_every_task_is_owned();
        one
    }

    pub(crate) fn start(&mut self, i: usize) {
        assert!(
            self.jobs[i].is_none(),
            "instance {} runs already",
            self.ids[i]
        );
        self.ports[i] = free_port();
        self.jobs[i] = Some(start_instance(
            &self.stage.config,
            self.ids[i],
            Some(self.ports[i]),
            Some(&self.log(i)),
        ));
    }

    /// Where instance `i`'s log goes, across its restarts.
    fn log(&self, i: usize) -> PathBuf {
        self.stage.dir.join(format!("{}.log", self.ids[i]))
    }

    /// The end of every instance's log, for a failure's message.
    pub(crate) fn logs(&self) -> String {
        (0..self.ids.len())
            .map(|i| {
                let stacks = match &self.jobs[i] {
                    Some(job) => format!(
                        "--- where the threads of instance {} are ---\n{}\n",
                        self.ids[i],
                        thread_stacks(job.0.id())
                    ),
                    None => String::new(),
                };
                format!(
                    "{stacks}--- log of instance {} (end) ---\n{}",
                    self.ids[i],
                    log_tail(&self.log(i), 60)
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    pub(crate) fn running(&self) -> Vec<usize> {
        (0..self.ids.len())
            .filter(|i| self.jobs[*i].is_some())
            .collect()
    }

    /// Asserts that instance `i` is still running: it rode out what happened by itself.
    pub(crate) fn assert_alive(&mut self, i: usize, after: &str) {
        let job = self.jobs[i].as_mut().expect("the instance was started");
        let status = job.0.try_wait().unwrap();
        assert!(
            status.is_none(),
            "instance {} exited {after} ({status:?})\n{}",
            self.ids[i],
            self.logs()
        );
    }

    /// SIGKILL: no flush, no commit, no leave.
    pub(crate) fn kill(&mut self, i: usize) {
        let mut j = self.jobs[i].take().expect("the instance runs");
        j.0.kill().unwrap();
        j.0.wait().unwrap();
    }

    pub(crate) fn stop(&mut self, i: usize) {
        stop_cleanly(self.jobs[i].take().expect("the instance runs"), self.ids[i]);
    }

    pub(crate) fn pid(&self, i: usize) -> String {
        self.jobs[i]
            .as_ref()
            .expect("the instance runs")
            .0
            .id()
            .to_string()
    }

    /// Waits until the running instances own every task between them (their
    /// `gmv_tasks`, steady for 3 s): after the last rebalance, no input or
    /// repartition partition is left without an owner.
    pub(crate) fn wait_until_every_task_is_owned(&self) {
        let metadata = reader(self.stage)
            .fetch_metadata(
                Some(&self.stage.cfg.topics.repartition),
                Duration::from_secs(10),
            )
            .expect("metadata of the repartition topic");
        let tasks = (PARTITIONS as usize + metadata.topics()[0].partitions().len()) as f64;
        let (deadline, mut steady, mut owned) = (Instant::now() + Duration::from_secs(90), 0, 0.0);
        while Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(300));
            owned = self
                .running()
                .into_iter()
                .filter_map(|i| try_http_get(self.ports[i], "/metrics"))
                .map(|m| metric_sum(&m, "gmv_tasks"))
                .sum();
            steady = if owned == tasks { steady + 1 } else { 0 };
            if steady == 10 {
                return;
            }
        }
        panic!("the running instances own {owned} of {tasks} tasks after 90 s");
    }

    /// What the running instances dropped or saw late: where a difference comes from.
    pub(crate) fn counters(&self) -> String {
        self.running()
            .into_iter()
            .flat_map(|i| {
                try_http_get(self.ports[i], "/metrics")
                    .unwrap_or_default()
                    .lines()
                    .filter(|l| {
                        [
                            "gmv_late_partials_total",
                            "gmv_dead_letters_total",
                            "gmv_rebalances_total",
                        ]
                        .iter()
                        .any(|m| l.starts_with(m))
                    })
                    .map(|l| format!("{}: {l}", self.ids[i]))
                    .collect::<Vec<_>>()
            })
            .collect::<Vec<_>>()
            .join("\n  ")
    }
}

pub(crate) fn signal(pid: &str, sig: &str) {
    assert!(Command::new("kill")
        .args([sig, pid])
        .status()
        .unwrap()
        .success());
}
