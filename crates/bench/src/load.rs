//! A closed-loop load generator: `clients` tasks each issue one write at a time for `duration`.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde::Serialize;

/// The figures of one run.
#[derive(Clone, Debug, Serialize)]
pub struct LoadResult {
    pub clients: usize,
    pub ops: u64,
    pub errors: u64,
    pub seconds: f64,
    pub ops_per_sec: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    /// Writes completed in each second of the run, in order (the last one may be partial).
    pub per_second: Vec<u64>,
    /// CPU time (user and system) the system under test spent per completed operation, in
    /// microseconds, when the caller measured it.
    pub cpu_us_per_op: Option<f64>,
    /// CPU time the load generator (this process) spent per completed operation, likewise: it
    /// shares the cores with the system under test.
    pub generator_cpu_us_per_op: Option<f64>,
}

/// Runs `op(client, n)` in `clients` concurrent loops for `duration`.
pub async fn run<F, Fut>(clients: usize, duration: Duration, op: F) -> LoadResult
where
    F: Fn(usize, u64) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = bool> + Send,
{
    let op = Arc::new(op);
    let start = Instant::now();
    let deadline = start + duration;
    let seconds_total = duration.as_secs() as usize + 2;
    let per_second: Arc<Vec<AtomicU64>> =
        Arc::new((0..seconds_total).map(|_| AtomicU64::new(0)).collect());
    let mut tasks = Vec::new();
    for c in 0..clients {
        let op = Arc::clone(&op);
        let per_second = Arc::clone(&per_second);
        tasks.push(tokio::spawn(async move {
            let mut hist =
                Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("histogram bounds");
            let mut errors = 0u64;
            let mut n = 0u64;
            while Instant::now() < deadline {
                let t = Instant::now();
                let ok = op(c, n).await;
                n += 1;
                if ok {
                    let _ = hist.record(t.elapsed().as_micros().max(1) as u64);
                    let second = (start.elapsed().as_secs() as usize).min(seconds_total - 1);
                    per_second[second].fetch_add(1, Ordering::Relaxed);
                } else {
                    errors += 1;
                }
            }
            (hist, errors)
        }));
    }
    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("histogram bounds");
    let mut errors = 0;
    for t in tasks {
        let (h, e) = t.await.expect("load task");
        hist.add(h).expect("same histogram bounds");
        errors += e;
    }
    let seconds = start.elapsed().as_secs_f64();
    let mut per_second: Vec<u64> = per_second
        .iter()
        .map(|n| n.load(Ordering::Relaxed))
        .collect();
    while per_second.last() == Some(&0) {
        per_second.pop();
    }
    LoadResult {
        clients,
        ops: hist.len(),
        errors,
        seconds,
        ops_per_sec: hist.len() as f64 / seconds,
        p50_ms: hist.value_at_quantile(0.50) as f64 / 1000.0,
        p99_ms: hist.value_at_quantile(0.99) as f64 / 1000.0,
        per_second,
        cpu_us_per_op: None,
        generator_cpu_us_per_op: None,
    }
}

/// CPU time (user and system, all threads) of the processes `pids`, in seconds.
fn cpu_seconds(pids: &[u32]) -> f64 {
    // utime and stime are the 12th and 13th fields after the parenthesised command name;
    // /proc reports them in clock ticks, which Linux fixes at 100 per second for /proc.
    const TICKS_PER_SECOND: f64 = 100.0;
    pids.iter()
        .filter_map(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            let rest = &stat[stat.rfind(')')? + 1..];
            let fields: Vec<&str> = rest.split_whitespace().collect();
            let utime: f64 = fields.get(11)?.parse().ok()?;
            let stime: f64 = fields.get(12)?.parse().ok()?;
            Some((utime + stime) / TICKS_PER_SECOND)
        })
        .sum()
}

/// Runs `op` as [`run`] does and also measures the CPU time of `pids` per completed operation.
pub async fn run_measuring_cpu<F, Fut>(
    pids: &[u32],
    clients: usize,
    duration: Duration,
    op: F,
) -> LoadResult
where
    F: Fn(usize, u64) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = bool> + Send,
{
    let me = [std::process::id()];
    let (before, generator_before) = (cpu_seconds(pids), cpu_seconds(&me));
    let mut result = run(clients, duration, op).await;
    let spent = cpu_seconds(pids) - before;
    let generator = cpu_seconds(&me) - generator_before;
    let ops = result.ops.max(1) as f64;
    result.cpu_us_per_op = Some(spent * 1e6 / ops);
    result.generator_cpu_us_per_op = Some(generator * 1e6 / ops);
    result
}

/// Resident set size of a process, in MiB.
pub fn rss_mib(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}
