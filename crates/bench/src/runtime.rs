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
    let flotilla = flotilla_testkit::flotilla_bin();
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
    let bundle = flotilla_testkit::busybox_bundle(dir.path(), &["/bin/true"], |c| {
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
            let mut command = cmd.clone();
            command.extend([
                "--root".into(),
                state.join(name).display().to_string(),
                "run".into(),
                "--bundle".into(),
                bundle.display().to_string(),
                id,
            ]);
            times[i].push(timed(&command)?);
        }
    }
    let rows: Vec<Row> = runtimes
        .iter()
        .zip(times)
        .map(|((name, _), t)| row(name, t))
        .collect();
    println!(
        "\nrun of /bin/true to exit, {} runs each, interleaved",
        args.runs
    );
    print_table("runtime", &rows);
    let by = |name: &str| rows.iter().find(|r| r.runtime == name).map(|r| r.median_ms);
    if let (Some(f), Some(c), Some(r)) = (by("flotilla"), by("crun"), by("runc")) {
        println!(
            "flotilla / crun median: {:.2}x; flotilla / runc: {:.2}x",
            f / c,
            f / r
        );
    }
    let pods = pod_start(args.runs, &flotilla, &runtimes[2].1[0], dir.path())?;
    println!(
        "\npod start with networking (sandbox: namespaces, veth into a bridge, address, route; then a container of /bin/true run to exit), {} runs each, interleaved",
        args.runs
    );
    print_table("how", &pods);
    println!(
        "flotilla / (ip + crun) median: {:.2}x; network only, library / ip x7: {:.2}x",
        pods[0].median_ms / pods[1].median_ms,
        pods[2].median_ms / pods[3].median_ms
    );
    let mut rows = rows;
    rows.extend(pods);
    if let Some(path) = args.json {
        std::fs::write(&path, serde_json::to_vec_pretty(&rows)?)?;
        eprintln!("wrote {}", path.display());
    }
    Ok(())
}

fn print_table(first: &str, rows: &[Row]) {
    let width = rows
        .iter()
        .map(|r| r.runtime.len())
        .max()
        .unwrap_or(0)
        .max(first.len());
    println!(
        "{first:<width$} {:>10} {:>8} {:>8}",
        "median ms", "p90 ms", "min ms"
    );
    for r in rows {
        println!(
            "{:<width$} {:>10.1} {:>8.1} {:>8.1}",
            r.runtime, r.median_ms, r.p90_ms, r.min_ms
        );
    }
}

fn row(name: &str, mut t: Vec<f64>) -> Row {
    t.sort_by(f64::total_cmp);
    Row {
        runtime: name.to_string(),
        runs: t.len(),
        median_ms: t[t.len() / 2],
        p90_ms: t[(t.len() * 9 / 10).min(t.len() - 1)],
        min_ms: t[0],
    }
}

/// Runs `cmd`, failing with its stderr; returns how long it took in ms.
fn timed(cmd: &[String]) -> Result<f64> {
    let started = Instant::now();
    let out = Command::new(&cmd[0])
        .args(&cmd[1..])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .with_context(|| format!("run {}", cmd[0]))?;
    let took = started.elapsed().as_secs_f64() * 1000.0;
    if !out.status.success() {
        bail!(
            "{} failed ({}): {}",
            cmd.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(took)
}

fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|s| s.to_string()).collect()
}

/// A pod with networking, started two ways, interleaved: `flotilla runtime sandbox create` then
/// `run --sandbox` (netlink in-process), and what a shell CNI plugin and crun do: a named
/// network namespace and the veth, addresses and route by seven `ip` commands, then `crun run`
/// in that namespace. Both use the same bridge, and are torn down (untimed) after each run.
/// Then the network alone: `Runtime::create_sandbox` called in-process (what the agent pays)
/// against the seven commands.
fn pod_start(runs: usize, flotilla: &Path, crun: &str, dir: &Path) -> Result<Vec<Row>> {
    const BRIDGE: &str = "fltbench0";
    const CIDR: &str = "10.250.0.0/24";
    let flotilla = flotilla.display().to_string();
    let state = dir.join("pods");
    let ipam = dir.join("ipam");
    let bundle = flotilla_testkit::busybox_bundle(&dir.join("pod-bundle"), &["/bin/true"], |_| {});
    // For crun: the network namespace `ip netns add` makes.
    let crun_bundle = flotilla_testkit::busybox_bundle(
        &dir.join("crun-bundle"),
        &["/bin/true"],
        |c| {
            c["linux"]["namespaces"] = serde_json::json!([{"type": "pid"}, {"type": "network", "path": "/run/netns/flbench"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"}]);
        },
    );
    let rt = |args: &[&str]| -> Vec<String> {
        let mut v = vec![
            flotilla.clone(),
            "runtime".into(),
            "--root".into(),
            state.display().to_string(),
        ];
        v.extend(strings(args));
        v
    };
    let ipam_dir = ipam.display().to_string();
    let create = |id: &str| {
        rt(&[
            "sandbox",
            "create",
            "--bridge",
            BRIDGE,
            "--pod-cidr",
            CIDR,
            "--ipam-dir",
            &ipam_dir,
            id,
        ])
    };
    // The bridge exists before either is timed.
    timed(&create("warm"))?;
    timed(&rt(&["sandbox", "delete", "warm"]))?;
    let ip = |args: &str| -> Vec<String> {
        std::iter::once("ip".to_string())
            .chain(args.split_whitespace().map(str::to_string))
            .collect()
    };
    let (mut ours, mut theirs) = (Vec::new(), Vec::new());
    let (mut library, mut ip_only) = (Vec::new(), Vec::new());
    let runtime = flotilla_runtime::Runtime::new(&state);
    let config = flotilla_runtime::SandboxConfig {
        hostname: "bench".into(),
        network: flotilla_runtime::net::PodNetwork {
            bridge: BRIDGE.into(),
            cidr: CIDR.parse().map_err(anyhow::Error::msg)?,
        },
        ipam_dir: ipam.clone(),
        dns: Vec::new(),
        search: Vec::new(),
        dns_options: Vec::new(),
        host_network: false,
    };
    for n in 0..runs {
        // The network alone: the library call the agent makes, against the seven commands.
        let id = format!("lib-{n}-{}", std::process::id());
        let started = Instant::now();
        runtime.create_sandbox(&id, &config)?;
        library.push(started.elapsed().as_secs_f64() * 1000.0);
        runtime.delete_sandbox(&id, false)?;
        let mut t = 0.0;
        for step in NETWORK_STEPS {
            t += timed(&ip(&step.replace("BRIDGE", BRIDGE)))?;
        }
        ip_only.push(t);
        timed(&ip("link del flbenchv"))?;
        timed(&ip("netns del flbench"))?;

        let id = format!("pod-{n}-{}", std::process::id());
        let bundle_s = bundle.display().to_string();
        let t = timed(&create(&id))?
            + timed(&rt(&["run", "--sandbox", &id, "--bundle", &bundle_s, &id]))?;
        ours.push(t);
        timed(&rt(&["sandbox", "delete", &id]))?;

        let mut t = 0.0;
        for step in NETWORK_STEPS {
            t += timed(&ip(&step.replace("BRIDGE", BRIDGE)))?;
        }
        let crun_state = dir.join("crun-state").display().to_string();
        t += timed(&strings(&[
            crun,
            "--root",
            &crun_state,
            "run",
            "--bundle",
            &crun_bundle.display().to_string(),
            &id,
        ]))?;
        theirs.push(t);
        timed(&ip("link del flbenchv"))?;
        timed(&ip("netns del flbench"))?;
    }
    let _ = Command::new("ip").args(["link", "del", BRIDGE]).status();
    Ok(vec![
        row("flotilla sandbox+run", ours),
        row("ip x7 + crun run", theirs),
        row("sandbox (library call)", library),
        row("ip x7 (network only)", ip_only),
    ])
}

/// A pod's network by `ip`, as a shell CNI plugin would set it up.
const NETWORK_STEPS: [&str; 7] = [
    "netns add flbench",
    "link add flbenchv type veth peer name eth0 netns flbench",
    "link set flbenchv master BRIDGE up",
    "-n flbench addr add 10.250.0.250/24 dev eth0",
    "-n flbench link set eth0 up",
    "-n flbench link set lo up",
    "-n flbench route add default via 10.250.0.1",
];

fn which(tool: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .chain(["/usr/sbin", "/sbin"])
        .map(|d| Path::new(d).join(tool))
        .find(|p| p.is_file())
}
