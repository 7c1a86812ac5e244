//! `gmv demo` on its embedded broker (librdkafka's mock cluster, in the
//! process: no service needed), above its default rate.

use std::process::Command;

mod support;
use support::broker::free_port;

/// The embedded broker keeps only the last 5 MB of each partition. From
/// 30,000 – 40,000 records/s the generator, started beside the job, used to
/// fill that before the job read its partitions: the consumer was reset past
/// the lost records again and again and never read an order ("placed 0" for
/// the whole run). The job now says when that happens (`app/recovery.rs`).
#[test]
fn the_demo_at_50000_records_a_second_reads_its_orders_and_loses_none() {
    let rate: u64 = 50_000;
    let out = Command::new(env!("CARGO_BIN_EXE_gmv"))
        .args(["demo", "--rate", &rate.to_string(), "--seconds", "25"])
        .arg("--metrics-listen")
        .arg(format!("127.0.0.1:{}", free_port()))
        .output()
        .expect("running gmv demo");
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "gmv demo failed:\n{stderr}");
    for text in [&stdout, &stderr] {
        let reset = text.lines().find(|l| l.contains("no longer in its log"));
        assert!(
            reset.is_none(),
            "records were gone before the job read them: {reset:?}"
        );
    }
    // The live summary's last line: "[  25s] GMV ¥… placed N … watermark …".
    let last = stdout
        .lines()
        .rfind(|l| l.starts_with('['))
        .unwrap_or_else(|| panic!("no summary line in:\n{stdout}"));
    let placed: u64 = last
        .split_whitespace()
        .skip_while(|w| *w != "placed")
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no count of orders placed in {last:?}"));
    // A third of the records are orders; at least 5 of the 25 s read.
    assert!(placed >= rate * 5 / 3, "{placed} orders placed: {last}");
    assert!(!last.contains("watermark none"), "no watermark: {last}");
}
