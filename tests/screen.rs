//! The big screen in a real browser: `gmv demo` started, its page opened in
//! headless Chromium (Debian's `chromium`, driven by `playwright-core` from
//! the npm registry: tests/browser/screen.mjs, which says what it checks,
//! down to reconnecting by itself to a new demo after the first one ended).
//! scripts/install-test-deps.sh installs both; without them this test fails,
//! naming what is missing. Screenshots: target/screen-test/.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

mod support;
use support::broker::{free_port, wait_for_port, Proc};

#[test]
fn the_big_screen_rises_charts_fires_milestones_shows_a_stall_and_reconnects() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    assert!(
        Path::new(&chromium).exists(),
        "no Chromium at {chromium}: run scripts/install-test-deps.sh (Debian package `chromium`)"
    );
    assert!(
        root.join("tests/browser/node_modules/playwright-core").exists(),
        "playwright-core is not installed: run scripts/install-test-deps.sh (npm ci in tests/browser)"
    );
    let port = free_port();
    let demo = Proc(
        Command::new(env!("CARGO_BIN_EXE_gmv"))
            .args(["demo", "--seconds", "600", "--metrics-listen"])
            .arg(format!("127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .spawn()
            .expect("starting gmv demo"),
    );
    wait_for_port(port, Duration::from_secs(60), "the demo's page");
    let out = root.join("target/screen-test");
    let status = Command::new("node")
        .arg(root.join("tests/browser/screen.mjs"))
        .arg(format!("http://127.0.0.1:{port}/"))
        .arg(&out)
        .arg(demo.0.id().to_string())
        .arg(env!("CARGO_BIN_EXE_gmv"))
        .env("CHROMIUM", &chromium)
        .status()
        .expect("running node (Node.js is needed for the browser test)");
    assert!(
        status.success(),
        "the browser test failed (its output is above)"
    );
    for shot in ["wall.png", "phone.png", "stalled.png"] {
        assert!(out.join(shot).exists(), "no screenshot {shot}");
    }
}
