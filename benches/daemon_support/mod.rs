//! Helpers the benchmarks that run the real daemon share: percentiles,
//! process RSS and CPU time, the machine's description, and `wrk` as a load
//! generator in a separate process. Included with
//! `#[path = "daemon_support/mod.rs"] mod daemon_support;`.
#![allow(dead_code)]

use std::process::Command;
use std::time::Duration;

pub fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(default)
}

/// The `p` quantile of sorted samples.
pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() as f64 * p) as usize).min(sorted.len() - 1)]
}

pub fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1e3)
}

/// `VmRSS` and `VmHWM` (peak) of a process, in MB.
pub fn rss_mb(pid: u32) -> (f64, f64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
            .map_or(0.0, |kb| kb / 1024.0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// User + system CPU time a process has used so far.
pub fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // After the command name (which may hold spaces): utime is the 12th
    // field, stime the 13th, both in clock ticks (100 per second on Linux).
    let rest = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<u64> = rest
        .split_whitespace()
        .map(|f| f.parse().unwrap_or(0))
        .collect();
    let ticks = fields.get(11).unwrap_or(&0) + fields.get(12).unwrap_or(&0);
    Duration::from_millis(ticks * 10)
}

fn shell(command: &str) -> String {
    Command::new("sh")
        .args(["-c", command])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

/// The machine, for BENCHMARKS.md: `nproc`, the `lscpu` model, the load.
pub fn machine() -> String {
    format!(
        "nproc {}, {}, load average {}",
        shell("nproc"),
        shell("lscpu | sed -n 's/^Model name: *//p' | head -1"),
        shell("cut -d' ' -f1-3 /proc/loadavg")
    )
}

/// What `wrk` measured.
pub struct WrkResult {
    pub requests_per_sec: f64,
    pub p50: String,
    pub p99: String,
    pub non_2xx: bool,
}

impl std::fmt::Display for WrkResult {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:.0}/s, p50 {}, p99 {}{}",
            self.requests_per_sec,
            self.p50,
            self.p99,
            if self.non_2xx {
                " (non-2xx answers!)"
            } else {
                ""
            }
        )
    }
}

/// `wrk -t<threads> -c<connections> -d<secs>s --latency` against `base`,
/// cycling through `paths`; `None` when wrk is not installed
/// (`apt-get install wrk`).
pub fn wrk(
    base: &str,
    paths: &[String],
    threads: usize,
    connections: usize,
    secs: u64,
) -> Option<WrkResult> {
    Command::new("wrk").arg("--version").output().ok()?;
    let dir = tempfile::tempdir().ok()?;
    let script = dir.path().join("paths.lua");
    let list: Vec<String> = paths.iter().map(|p| format!("{p:?}")).collect();
    std::fs::write(
        &script,
        format!(
            "local paths = {{{}}}\nlocal i = 0\nrequest = function()\n  i = i % #paths + 1\n  return wrk.format(\"GET\", paths[i])\nend\n",
            list.join(",")
        ),
    )
    .ok()?;
    let output = Command::new("wrk")
        .args([
            &format!("-t{threads}"),
            &format!("-c{connections}"),
            &format!("-d{secs}s"),
            "--latency",
            "-s",
        ])
        .arg(&script)
        .arg(base)
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&output.stdout);
    let requests_per_sec = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("Requests/sec:"))?
        .trim()
        .parse()
        .ok()?;
    let pct = |p: &str| {
        text.lines()
            .find_map(|l| l.trim().strip_prefix(p).map(|v| v.trim().to_string()))
            .unwrap_or_else(|| "?".into())
    };
    Some(WrkResult {
        requests_per_sec,
        p50: pct("50%"),
        p99: pct("99%"),
        non_2xx: text.contains("Non-2xx"),
    })
}
