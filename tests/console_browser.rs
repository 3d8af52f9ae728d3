//! The operator console in a real headless Chromium: pouchdb-server and the
//! daemon with every demo document of `fixtures/couch/` (as `scripts/demo`
//! loads them, through `scripts/load-fixtures`), plus one unit whose name
//! is markup, then `tests/console/console_test.py` (Playwright for Python
//! driving Debian's `chromium`) loads each view and asserts what it shows:
//! feeds and live charts, errors with links, a unit found by MAC with its
//! "why this value" and masked files, the route tester, the ACL lists and
//! DNS names, the edges. Screenshots land in the test's temporary folder
//! (kept and printed when the test fails).
//!
//! Needs `chromium` (or `CALDERA_CHROMIUM`) and the pinned Playwright in
//! `tools/browser/.venv` (or `CALDERA_BROWSER_PYTHON`); `.ci/run` installs
//! both. Without them the test fails, unless `CALDERA_SKIP_BROWSER=1`,
//! which skips it and says so.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::common::TestEnv;
use crate::console::load_all_fixtures;
use crate::support::couch::repo_root;
use crate::support::daemon::Daemon;

const NODE: &str = "ecallmgr@kz1.example.net";
const YEALINK: &str = "Yealink SIP-T46S 66.86.0.15 80:5e:c0:12:34:56";

/// Whether the browser test is to be skipped (`CALDERA_SKIP_BROWSER=1`); says so.
fn skip(test: &str) -> bool {
    let skip = std::env::var("CALDERA_SKIP_BROWSER").is_ok_and(|v| v.trim() == "1");
    if skip {
        eprintln!("{test}: SKIPPED because CALDERA_SKIP_BROWSER=1 (no browser test ran)");
    }
    skip
}

/// (python with Playwright, chromium), or a panic saying how to get them.
fn browser_tools() -> (PathBuf, PathBuf) {
    let from_env = |key: &str| std::env::var_os(key).map(PathBuf::from);
    let python = from_env("CALDERA_BROWSER_PYTHON")
        .unwrap_or_else(|| repo_root().join("tools/browser/.venv/bin/python"));
    let chromium =
        from_env("CALDERA_CHROMIUM").unwrap_or_else(|| PathBuf::from("/usr/bin/chromium"));
    let hint = "install them as .ci/run does (apt-get install chromium; python3 -m venv tools/browser/.venv \
                && tools/browser/.venv/bin/pip install -r tools/browser/requirements.txt), \
                or set CALDERA_SKIP_BROWSER=1 to skip the browser test";
    assert!(
        chromium.exists(),
        "no Chromium at {}: {hint}",
        chromium.display()
    );
    let has_playwright = Command::new(&python)
        .args(["-c", "import playwright"])
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        has_playwright,
        "no Playwright for {}: {hint}",
        python.display()
    );
    (python, chromium)
}

/// Waits until the demo's route, units and a phone's request are there.
async fn wait_for_demo(daemon: &Daemon) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let route = daemon
            .get("/v1/routes/example.net/default/33123456789")
            .await;
        let unit = daemon.get("/v1/units/unit-acme-yealink").await;
        if route.status.is_success() && unit.status.is_success() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "demo not built: {} / {}",
            route.text,
            unit.text
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // A phone asks, so the unit's request log has a line.
    let reply = daemon
        .try_send(
            daemon
                .http()
                .get(daemon.phones_url("/805ec0123456.cfg"))
                .header("Host", "acme.sip.example.net")
                .header("User-Agent", YEALINK),
        )
        .await
        .unwrap();
    assert!(reply.status.is_success(), "{reply:?}");
    // The README's telemetry: a download and a failed consumption by c3d4e5.
    for (kind, status) in [
        ("package_download", "success"),
        ("package_consumption", "failed"),
    ] {
        let path = format!("/api/v1.0/edge_telemetry/{kind}/b2c3d4/{status}/");
        let body = json!({"edge_id": "c3d4e5", "package_name": "c3d4e5-20240102083000.tar.gz",
                          "template_set_version": "0.16"});
        let reply = daemon.post(&path, &body).await;
        assert!(reply.status.is_success(), "{path}: {}", reply.text);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_console_shows_every_view_in_a_real_browser() {
    if skip("the_console_shows_every_view_in_a_real_browser") {
        return;
    }
    let (python, chromium) = browser_tools();
    let env = TestEnv::new().await;
    load_all_fixtures(&env).await;
    let mut config = env.config(NODE);
    config.set("zone", "local");
    let daemon = Daemon::start_ready(&config).await;
    wait_for_demo(&daemon).await;
    let shots = tempfile::Builder::new()
        .prefix("caldera-console-")
        .tempdir()
        .unwrap();
    let mut command = Command::new(&python);
    command
        .arg(repo_root().join("tests/console/console_test.py"))
        .args(["--url", &daemon.api_url("")])
        .arg("--out")
        .arg(shots.path())
        .arg("--chromium")
        .arg(&chromium);
    if let Some(path) = std::env::var_os("CALDERA_CONSOLE_DOCS_SHOT") {
        // `CALDERA_CONSOLE_DOCS_SHOT=$PWD/docs/console.png` refreshes the README's picture.
        command.arg("--docs-shot").arg(path);
    }
    let started = Instant::now();
    let out = tokio::task::spawn_blocking(move || command.output())
        .await
        .unwrap()
        .expect("the browser test script runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let result: Value = stdout
        .lines()
        .last()
        .and_then(|l| serde_json::from_str(l).ok())
        .unwrap_or(Value::Null);
    if result["ok"] != true {
        let kept = shots.keep();
        panic!(
            "the console failed in Chromium: {}\nchecks passed: {}\nscreenshots in {}\nstderr:\n{}",
            result["failure"],
            result["checks"],
            kept.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    eprintln!(
        "console: {} checks passed in Chromium in {:.1} s: {}",
        result["checks"].as_array().map_or(0, Vec::len),
        started.elapsed().as_secs_f64(),
        result["checks"]
    );
    for view in ["overview", "errors", "unit", "routing", "acls", "edge"] {
        let shot = shots.path().join(format!("{view}.png"));
        assert!(
            std::fs::metadata(&shot).is_ok_and(|m| m.len() > 0),
            "{}",
            shot.display()
        );
    }
}
