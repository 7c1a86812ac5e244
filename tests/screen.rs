//! The big screen in real browsers: `gmv demo` started, its page opened in
//! headless Chromium and in headless Firefox (Debian's `chromium` and
//! `firefox-esr`, driven by `puppeteer-core` from the npm registry:
//! tests/browser/screen.mjs, which says what it checks, down to reconnecting
//! by itself to a new demo after the first one ended).
//! scripts/install-test-deps.sh installs them; without them these tests fail,
//! naming what is missing. Screenshots: target/screen-test/<browser>/.

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::Duration;

mod support;
use support::broker::{free_port, wait_for_port, Proc};

/// One demo at a time: two demos and two browsers at once on a two-core
/// machine would starve the stall and reconnect checks of CPU.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

#[test]
fn in_chromium_the_big_screen_rises_charts_fires_milestones_shows_a_stall_and_reconnects() {
    check_in("chrome", "CHROMIUM", "/usr/bin/chromium", "chromium");
}

#[test]
fn in_firefox_the_big_screen_rises_charts_fires_milestones_shows_a_stall_and_reconnects() {
    check_in("firefox", "FIREFOX", "/usr/bin/firefox-esr", "firefox-esr");
}

fn check_in(kind: &str, env: &str, default_path: &str, package: &str) {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let browser = std::env::var(env).unwrap_or_else(|_| default_path.into());
    assert!(
        Path::new(&browser).exists(),
        "no {kind} at {browser}: run scripts/install-test-deps.sh (Debian package `{package}`), or set {env}"
    );
    assert!(
        root.join("tests/browser/node_modules/puppeteer-core").exists(),
        "puppeteer-core is not installed: run scripts/install-test-deps.sh (npm ci in tests/browser)"
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
    let out = root.join("target/screen-test").join(kind);
    let status = Command::new("node")
        .arg(root.join("tests/browser/screen.mjs"))
        .arg(kind)
        .arg(format!("http://127.0.0.1:{port}/"))
        .arg(&out)
        .arg(demo.0.id().to_string())
        .arg(env!("CARGO_BIN_EXE_gmv"))
        .env("BROWSER_PATH", &browser)
        .status()
        .expect("running node (Node.js is needed for the browser test)");
    assert!(
        status.success(),
        "the browser test in {kind} failed (its output is above)"
    );
    for shot in ["wall.png", "phone.png", "stalled.png"] {
        assert!(out.join(shot).exists(), "no screenshot {shot} from {kind}");
    }
}
