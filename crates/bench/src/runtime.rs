//! `flotilla-bench runtime`: run-to-exit of `/bin/true` from one OCI bundle (a busybox root
//! file system) under Flotilla's runtime, runc and crun, interleaved, timing each command from
//! spawn to exit.
//!
//! crun refuses this machine's hybrid cgroup layout, so the whole benchmark runs in a private
//! mount namespace in which `/sys/fs/cgroup/unified/cgroup.controllers` is hidden (the
//! benchmark re-executes itself under `unshare -m`): all three runtimes see the same view.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use serde::Serialize;

#[derive(clap::Args)]
pub struct RuntimeArgs {
    /// Runs per runtime.
    #[arg(long, default_value_t = 100)]
    runs: usize,
    /// Also write the figures as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Set when re-executed inside the private mount namespace.
    #[arg(long, hide = true)]
    inside: bool,
}

#[derive(Serialize)]
struct Row {
    runtime: String,
    runs: usize,
    median_ms: f64,
    p90_ms: f64,
    min_ms: f64,
}

const HIDDEN: &str = "/sys/fs/cgroup/unified/cgroup.controllers";

pub fn run(args: RuntimeArgs) -> Result<()> {
    if !args.inside && Path::new(HIDDEN).exists() {
        // Again, in a private mount namespace with the v2 controllers file hidden.
        let me = std::env::current_exe()?;
        let mut inner = vec![
            "-m".to_string(),
            "--propagation".into(),
            "private".into(),
            "sh".into(),
            "-c".into(),
            format!("mount --bind /dev/null {HIDDEN} && exec \"$0\" \"$@\""),
            me.display().to_string(),
            "runtime".into(),
            "--inside".into(),
            "--runs".into(),
            args.runs.to_string(),
        ];
        if let Some(j) = &args.json {
            inner.push("--json".into());
            inner.push(j.display().to_string());
        }
        let status = Command::new("unshare").args(&inner).status()?;
        if !status.success() {
            bail!("the benchmark in its private mount namespace failed: {status}");
        }
        return Ok(());
    }
    let flotilla = flotilla_tests::flotilla_bin();
    let mut runtimes: Vec<(String, Vec<String>)> = vec![(
        "flotilla".into(),
        vec![flotilla.display().to_string(), "runtime".into()],
    )];
    for tool in ["runc", "crun"] {
        match which(tool) {
            Some(path) => runtimes.push((tool.into(), vec![path.display().to_string()])),
            None => bail!("{tool} is not installed: `make deps` installs it"),
        }
    }
    let dir = tempfile::Builder::new()
        .prefix("flotilla-bench-rt-")
        .tempdir()?;
    let bundle = flotilla_tests::busybox_bundle(dir.path(), &["/bin/true"], |c| {
        // No network namespace setup cost differences: all three create the same namespaces.
        c["process"]["noNewPrivileges"] = serde_json::json!(true);
    });
    let state = dir.path().join("state");
    std::fs::create_dir_all(&state)?;
    let mut times: Vec<Vec<f64>> = vec![Vec::new(); runtimes.len()];
    eprintln!(
        "{} runs of /bin/true under each of flotilla, runc and crun, interleaved ...",
        args.runs
    );
    for n in 0..args.runs {
        for (i, (name, cmd)) in runtimes.iter().enumerate() {
            let id = format!("bench-{name}-{n}-{}", std::process::id());
            let mut command = Command::new(&cmd[0]);
            command.args(&cmd[1..]);
            command.arg("--root").arg(state.join(name));
            command.args(["run", "--bundle"]).arg(&bundle).arg(&id);
            command
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::piped());
            let started = Instant::now();
            let out = command.output().with_context(|| format!("run {name}"))?;
            let took = started.elapsed().as_secs_f64() * 1000.0;
            if !out.status.success() {
                bail!(
                    "{name} run failed ({}): {}",
                    out.status,
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            times[i].push(took);
        }
    }
    let rows: Vec<Row> = runtimes
        .iter()
        .zip(times)
        .map(|((name, _), mut t)| {
            t.sort_by(f64::total_cmp);
            Row {
                runtime: name.clone(),
                runs: t.len(),
                median_ms: t[t.len() / 2],
                p90_ms: t[(t.len() * 9 / 10).min(t.len() - 1)],
                min_ms: t[0],
            }
        })
        .collect();
    println!(
        "\nrun of /bin/true to exit, {} runs each, interleaved",
        args.runs
    );
    println!(
        "{:<10} {:>10} {:>8} {:>8}",
        "runtime", "median ms", "p90 ms", "min ms"
    );
    for r in &rows {
        println!(
            "{:<10} {:>10.1} {:>8.1} {:>8.1}",
            r.runtime, r.median_ms, r.p90_ms, r.min_ms
        );
    }
    let by = |name: &str| rows.iter().find(|r| r.runtime == name).map(|r| r.median_ms);
    if let (Some(f), Some(c), Some(r)) = (by("flotilla"), by("crun"), by("runc")) {
        println!(
            "flotilla / crun median: {:.2}x; flotilla / runc: {:.2}x",
            f / c,
            f / r
        );
    }
    if let Some(path) = args.json {
        std::fs::write(&path, serde_json::to_vec_pretty(&rows)?)?;
        eprintln!("wrote {}", path.display());
    }
    Ok(())
}

fn which(tool: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .chain(["/usr/sbin", "/sbin"])
        .map(|d| Path::new(d).join(tool))
        .find(|p| p.is_file())
}
