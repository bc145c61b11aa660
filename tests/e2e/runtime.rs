//! Issue 5: the runtime on OCI bundles of a busybox root file system, driven through
//! `flotilla runtime` as root (as CI runs): isolation, exit codes and signals, memory, pids and
//! CPU limits, and a clean host after 100 containers.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant};

use flotilla_tests::{busybox_bundle, eventually, runtime_cli};

fn require_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "the runtime tests need root (CI runs them as root)"
    );
}

/// A container id unique to this test run (cgroups are host-wide).
fn id(name: &str) -> String {
    format!("{name}-{}", std::process::id())
}

/// `create` then `start`, each asserted to succeed.
fn create_and_start(state: &Path, bundle: &Path, name: &str) {
    let (code, _, err) = runtime_cli(
        state,
        &["create", "--bundle", bundle.to_str().unwrap(), name],
    );
    assert_eq!(code, Some(0), "create {name}: {err}");
    let (code, _, err) = runtime_cli(state, &["start", name]);
    assert_eq!(code, Some(0), "start {name}: {err}");
}

#[test]
fn a_container_sees_only_itself() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let script = "echo pid=$$; echo host=$(hostname); \
        echo procs=$(ls /proc | grep -c '^[0-9]'); \
        echo links=$(tail -n +3 /proc/net/dev | cut -d: -f1 | tr -d ' ' | tr '\\n' ,); \
        echo hostmounts=$(grep -c ' /work\\| /var/cache' /proc/mounts); \
        echo root=$(ls / | tr '\\n' ,); echo caps=$(grep CapEff /proc/self/status | cut -f2); \
        echo write >/proc/sys/kernel/hostname 2>/dev/null && echo sysctl=written || echo sysctl=refused";
    let bundle = busybox_bundle(dir.path(), &["sh", "-c", script], |_| {});
    let state = tempfile::tempdir().unwrap();
    let (code, out, err) = runtime_cli(
        state.path(),
        &["run", "--bundle", bundle.to_str().unwrap(), &id("iso")],
    );
    assert_eq!(code, Some(0), "{out}{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "pid=1", "{out}");
    assert_eq!(lines[1], "host=box", "{out}");
    let procs: usize = lines[2].trim_start_matches("procs=").parse().unwrap();
    assert!(procs <= 4, "host processes visible: {out}");
    assert_eq!(
        lines[3], "links=lo,",
        "only loopback in a new network namespace: {out}"
    );
    assert_eq!(lines[4], "hostmounts=0", "{out}");
    assert_eq!(lines[5], "root=bin,dev,etc,proc,sys,tmp,", "{out}");
    // The Kubernetes default set: no CAP_SYS_ADMIN (bit 21).
    let caps = u64::from_str_radix(lines[6].trim_start_matches("caps="), 16).unwrap();
    assert_eq!(caps & (1 << 21), 0, "{out}");
    assert_ne!(caps, 0, "{out}");
    assert_eq!(lines[7], "sysctl=refused", "/proc/sys is read-only: {out}");
}

#[test]
fn exit_codes_and_signals_are_reported() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let state = tempfile::tempdir().unwrap();
    let bundle = busybox_bundle(dir.path(), &["sh", "-c", "exit 7"], |_| {});
    let (code, _, err) = runtime_cli(
        state.path(),
        &["run", "--bundle", bundle.to_str().unwrap(), &id("exit7")],
    );
    assert_eq!(code, Some(7), "{err}");

    let dir = tempfile::tempdir().unwrap();
    let bundle = busybox_bundle(dir.path(), &["sleep", "60"], |_| {});
    let name = id("killed");
    let mut run = std::process::Command::new(flotilla_tests::flotilla_bin())
        .args([
            "runtime",
            "--root",
            state.path().to_str().unwrap(),
            "run",
            "--bundle",
            bundle.to_str().unwrap(),
            &name,
        ])
        .spawn()
        .unwrap();
    let running = eventually(Duration::from_secs(20), || {
        runtime_cli(state.path(), &["state", &name])
            .1
            .contains("\"running\"")
    });
    assert!(running, "the container never ran");
    let (code, _, err) = runtime_cli(state.path(), &["kill", &name, "KILL"]);
    assert_eq!(code, Some(0), "{err}");
    let status = run.wait().unwrap();
    assert_eq!(status.code(), Some(137), "128 + SIGKILL");
    let (code, _, err) = runtime_cli(state.path(), &["state", &name]);
    assert_eq!(code, Some(1));
    assert!(
        err.contains("does not exist"),
        "run deletes what it ran: {err}"
    );
    // A missing program is an error naming it, not an exit code.
    let dir = tempfile::tempdir().unwrap();
    let bundle = busybox_bundle(dir.path(), &["no-such-program"], |_| {});
    let (code, _, err) = runtime_cli(
        state.path(),
        &["run", "--bundle", bundle.to_str().unwrap(), &id("noexec")],
    );
    assert_eq!(code, Some(1));
    assert!(
        err.contains(r#"exec: "no-such-program": executable file not found in $PATH"#),
        "{err}"
    );

    // Created (detached) containers: their shim reaps them and keeps how they ended, for
    // `wait` and `state`, after the commands that made them have exited.
    let dir = tempfile::tempdir().unwrap();
    let bundle = busybox_bundle(dir.path(), &["sh", "-c", "exit 7"], |_| {});
    let name = id("wait7");
    create_and_start(state.path(), &bundle, &name);
    let (code, out, err) = runtime_cli(state.path(), &["wait", &name]);
    assert_eq!((code, out.as_str()), (Some(0), "7\n"), "{err}");
    let (_, out, _) = runtime_cli(state.path(), &["state", &name]);
    let json: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        (json["status"].as_str(), json["exitCode"].as_i64()),
        (Some("stopped"), Some(7)),
        "{out}"
    );
    let dir = tempfile::tempdir().unwrap();
    let bundle = busybox_bundle(dir.path(), &["sleep", "60"], |_| {});
    let name = id("waitkill");
    create_and_start(state.path(), &bundle, &name);
    let (_, out, _) = runtime_cli(state.path(), &["state", &name]);
    assert!(
        out.contains("\"running\"") && !out.contains("exitCode"),
        "{out}"
    );
    let (code, _, err) = runtime_cli(state.path(), &["kill", &name, "KILL"]);
    assert_eq!(code, Some(0), "{err}");
    let (code, out, err) = runtime_cli(state.path(), &["wait", &name]);
    assert_eq!((code, out.as_str()), (Some(0), "137\n"), "{err}");
    for name in [id("wait7"), name] {
        let (code, _, err) = runtime_cli(state.path(), &["delete", &name]);
        assert_eq!(code, Some(0), "{err}");
    }
}

#[test]
fn memory_pids_and_cpu_limits_hold() {
    require_root();
    let state = tempfile::tempdir().unwrap();
    // Memory: 32 MiB, and dd asks for a 64 MiB buffer.
    let dir = tempfile::tempdir().unwrap();
    let bundle = busybox_bundle(
        dir.path(),
        &["dd", "if=/dev/zero", "of=/dev/null", "bs=64M", "count=1"],
        |c| {
            c["linux"]["resources"] = serde_json::json!({"memory": {"limit": 32 << 20}});
        },
    );
    let report = dir.path().join("report.json");
    let (code, _, err) = runtime_cli(
        state.path(),
        &[
            "run",
            "--bundle",
            bundle.to_str().unwrap(),
            "--report",
            report.to_str().unwrap(),
            &id("oom"),
        ],
    );
    assert_eq!(code, Some(137), "{err}");
    assert!(err.contains("OOMKilled"), "{err}");
    let r: serde_json::Value = serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
    assert_eq!(r["oomKilled"], true);

    // Pids: a fork bomb in a container limited to 16 processes. The inner shell forks
    // sleeps until a fork fails (fatal for it); the outer one then sleeps.
    let dir = tempfile::tempdir().unwrap();
    let bomb = "sh -c 'while :; do sleep 60 & done' 2>/dev/null; sleep 60";
    let bundle = busybox_bundle(dir.path(), &["sh", "-c", bomb], |c| {
        c["linux"]["resources"] = serde_json::json!({"pids": {"limit": 16}});
    });
    let name = id("pids");
    create_and_start(state.path(), &bundle, &name);
    // The cgroup's pids files, wherever this host keeps them (v1 or v2).
    let pids_dir = ["/sys/fs/cgroup/pids/flotilla", "/sys/fs/cgroup/flotilla"]
        .iter()
        .map(|d| Path::new(d).join(&name))
        .find(|d| d.join("pids.max").exists())
        .expect("the container's pids cgroup");
    let refused = eventually(Duration::from_secs(20), || {
        let events = std::fs::read_to_string(pids_dir.join("pids.events")).unwrap_or_default();
        events
            .lines()
            .any(|l| l.starts_with("max ") && l != "max 0")
    });
    assert!(refused, "the fork bomb was never refused a fork");
    let current: u32 = std::fs::read_to_string(pids_dir.join("pids.current"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(
        (2..=16).contains(&current),
        "{current} processes under a limit of 16"
    );
    let (code, _, err) = runtime_cli(state.path(), &["delete", "--force", &name]);
    assert_eq!(code, Some(0), "{err}");
    assert!(!pids_dir.exists(), "delete removes the cgroup");

    // CPU: a quota of half a CPU over 2 s of busy looping is about 1 s of CPU.
    let dir = tempfile::tempdir().unwrap();
    // (The loop runs as a child: pid 1 would ignore the SIGTERM that ends it.)
    let spin = "sh -c 'while :; do :; done' & sleep 2; kill $!; wait";
    let bundle = busybox_bundle(dir.path(), &["sh", "-c", spin], |c| {
        c["linux"]["resources"] = serde_json::json!({"cpu": {"quota": 50000, "period": 100000}});
    });
    let report = dir.path().join("cpu.json");
    let started = Instant::now();
    let (_, _, err) = runtime_cli(
        state.path(),
        &[
            "run",
            "--bundle",
            bundle.to_str().unwrap(),
            "--report",
            report.to_str().unwrap(),
            &id("cpu"),
        ],
    );
    let wall = started.elapsed().as_secs_f64();
    let r: serde_json::Value = serde_json::from_slice(&std::fs::read(&report).unwrap_or_default())
        .unwrap_or_else(|_| panic!("no report: {err}"));
    let cpu = r["cpuNanoseconds"].as_u64().unwrap() as f64 / 1e9;
    // The loop ran about 2 s; half a CPU of that is 1 s.
    assert!(
        (0.9..=1.1).contains(&cpu),
        "used {cpu:.3} s of CPU in {wall:.2} s with a 0.5 CPU quota"
    );
}

/// What a leak would leave on the host: processes of our bundles (found by `marker` in their
/// command line), the network namespaces they hold, cgroups named `many-…`, and mounts naming
/// `marker`. (Other tests run at the same time, so only what is ours is counted.)
fn host_traces(marker: &str) -> (usize, BTreeSet<String>, usize, usize) {
    let mut processes = 0;
    let mut netns = BTreeSet::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let name = entry.file_name().to_string_lossy().to_string();
        if !name.chars().all(|c| c.is_ascii_digit()) {
            continue;
        }
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        let cmdline = String::from_utf8_lossy(&cmdline);
        // The containers' processes, and the log shims (forked from `create ID`).
        let shim = cmdline.contains(&format!("many-{}-", std::process::id()));
        if cmdline.contains(marker) || shim {
            processes += 1;
            if let Ok(ns) = std::fs::read_link(entry.path().join("ns/net")) {
                netns.insert(ns.display().to_string());
            }
        }
    }
    let mut cgroups = 0;
    for controller in ["memory", "cpu", "cpuacct", "pids"] {
        if let Ok(dirs) = std::fs::read_dir(
            Path::new("/sys/fs/cgroup")
                .join(controller)
                .join("flotilla"),
        ) {
            cgroups += dirs
                .flatten()
                .filter(|d| d.file_name().to_string_lossy().starts_with("many-"))
                .count();
        }
    }
    let mounts = std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter(|l| l.contains(marker))
        .count();
    (processes, netns, cgroups, mounts)
}

#[test]
fn a_hundred_pods_killed_and_deleted_leave_nothing_behind() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let store = crate::pods::busybox_store(dir.path());
    let net = crate::pods::TestNet::new(3);
    // A sleep long enough to be running for the whole test, and unique enough to find.
    let marker = format!("{}", 900_000 + std::process::id());
    let ids: Vec<String> = (0..100)
        .map(|i| format!("many-{}-{i}", std::process::id()))
        .collect();
    // Each container in a sandbox of its own (a network namespace, a veth, an address) with
    // the busybox image as its root (an overlay mount).
    for id in &ids {
        net.sandbox(&state, id, id);
        crate::pods::start_in_pod(&state, &store, "busybox", id, id, &["sleep", &marker]);
    }
    let ours = state.to_str().unwrap();
    let (processes, netns, cgroups, _) = host_traces(&marker);
    assert_eq!(processes, 200, "every container runs, with its log shim");
    assert_eq!(
        netns.len(),
        101,
        "each pod has its own network namespace (the shims share the host's)"
    );
    assert_eq!(cgroups, 100 * 4);
    assert_eq!(net.ports(), 100, "a veth per pod on the bridge");
    // Per pod: the overlay root and the three namespace bind mounts.
    assert_eq!(host_traces(ours).3, 400);
    for id in &ids {
        let (code, _, err) = runtime_cli(&state, &["kill", id, "KILL"]);
        assert_eq!(code, Some(0), "kill {id}: {err}");
    }
    for id in &ids {
        let stopped = eventually(Duration::from_secs(10), || {
            runtime_cli(&state, &["state", id])
                .1
                .contains("\"stopped\"")
        });
        assert!(stopped, "{id} still runs after SIGKILL");
        let (code, _, err) = runtime_cli(&state, &["delete", id]);
        assert_eq!(code, Some(0), "delete {id}: {err}");
        let (code, _, err) = runtime_cli(&state, &["sandbox", "delete", id]);
        assert_eq!(code, Some(0), "sandbox delete {id}: {err}");
    }
    let (processes, netns, cgroups, _) = host_traces(&marker);
    assert_eq!(
        (processes, netns.len(), cgroups, host_traces(ours).3),
        (0, 0, 0, 0),
        "processes, network namespaces, cgroups, mounts left"
    );
    assert_eq!(net.ports(), 0, "veths left on the bridge");
    // The host ends are named after the pods' addresses (`flt` + hex): none of ours is left.
    let prefix = {
        let octets: Vec<u8> = net
            .cidr
            .split(['.', '/'])
            .take(3)
            .map(|o| o.parse().unwrap())
            .collect();
        format!("flt{:02x}{:02x}{:02x}", octets[0], octets[1], octets[2])
    };
    let links: Vec<String> = std::fs::read_dir("/sys/class/net")
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(&prefix))
        .collect();
    assert!(links.is_empty(), "veths left: {links:?}");
    assert_eq!(
        std::fs::read_dir(net.ipam.path()).unwrap().count(),
        0,
        "addresses left"
    );
    let left: Vec<_> = std::fs::read_dir(&state)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| !n.starts_with("bundle-") && n != ".sandboxes")
        .collect();
    assert!(left.is_empty(), "state left: {left:?}");
    assert_eq!(
        std::fs::read_dir(state.join(".sandboxes")).unwrap().count(),
        0,
        "sandboxes left"
    );
}

#[test]
fn without_root_the_runtime_names_the_missing_privilege() {
    require_root();
    use std::os::unix::process::CommandExt;
    let dir = tempfile::tempdir().unwrap();
    let bundle = busybox_bundle(dir.path(), &["true"], |_| {});
    let state = tempfile::tempdir().unwrap();
    std::fs::set_permissions(
        state.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o777),
    )
    .unwrap();
    let ipam = state.path().join("ipam");
    let bundle = bundle.to_str().unwrap();
    // A container, and a pod sandbox: both refused, naming the privilege, leaving nothing.
    for args in [
        vec!["run", "--bundle", bundle, "nobody"],
        vec![
            "sandbox",
            "create",
            "--ipam-dir",
            ipam.to_str().unwrap(),
            "nobody-pod",
        ],
    ] {
        let out = std::process::Command::new(flotilla_tests::flotilla_bin())
            .args(["runtime", "--root", state.path().to_str().unwrap()])
            .args(&args)
            .uid(65534)
            .gid(65534)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("needs CAP_SYS_ADMIN") && err.contains("run it as root"),
            "{args:?}: {err}"
        );
    }
    assert!(!ipam.exists(), "no address was taken");
    assert_eq!(
        std::fs::read_dir(state.path()).unwrap().count(),
        0,
        "nothing was made"
    );
}

#[test]
fn logs_follow_a_running_container_and_survive_its_exit() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let state = tempfile::tempdir().unwrap();
    // "second" only after a file appears, so a follower is attached while it runs.
    let script =
        "echo first; echo to-stderr >&2; while [ ! -e /tmp/go ]; do sleep 0.05; done; echo second";
    let bundle = busybox_bundle(dir.path(), &["sh", "-c", script], |_| {});
    let name = id("logs");
    create_and_start(state.path(), &bundle, &name);
    let follower = std::process::Command::new(flotilla_tests::flotilla_bin())
        .args([
            "runtime",
            "--root",
            state.path().to_str().unwrap(),
            "logs",
            "--follow",
            &name,
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let seen_first = eventually(Duration::from_secs(10), || {
        runtime_cli(state.path(), &["logs", &name])
            .1
            .contains("first")
    });
    assert!(seen_first, "the log never showed the first line");
    let (_, running, _) = runtime_cli(state.path(), &["state", &name]);
    assert!(running.contains("\"running\""), "{running}");
    std::fs::write(dir.path().join("rootfs/tmp/go"), "").unwrap();
    let out = follower.wait_with_output().unwrap();
    let followed = String::from_utf8_lossy(&out.stdout);
    let mut lines: Vec<&str> = followed.lines().collect();
    lines.sort();
    assert_eq!(
        lines,
        ["first", "second", "to-stderr"],
        "follow ends with the container: {followed}"
    );
    // After the exit: still there, with timestamps on request.
    let (_, stopped, _) = runtime_cli(state.path(), &["state", &name]);
    assert!(stopped.contains("\"stopped\""), "{stopped}");
    let (code, stamped, _) = runtime_cli(state.path(), &["logs", "--timestamps", &name]);
    assert_eq!(code, Some(0));
    let second = stamped
        .lines()
        .find(|l| l.ends_with(" second"))
        .expect("second line");
    let ts = second.split(' ').next().unwrap();
    assert!(
        ts.len() == 30 && ts.ends_with('Z') && ts.as_bytes()[10] == b'T',
        "{second}"
    );
    let (code, _, err) = runtime_cli(state.path(), &["delete", &name]);
    assert_eq!(code, Some(0), "{err}");
    let (code, _, err) = runtime_cli(state.path(), &["logs", &name]);
    assert_eq!(code, Some(1));
    assert!(err.contains("does not exist"), "{err}");
}

#[test]
fn exec_runs_inside_a_running_container_with_its_output_and_exit_code() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let state = tempfile::tempdir().unwrap();
    let bundle = busybox_bundle(dir.path(), &["sleep", "60"], |_| {});
    let name = id("exec");
    create_and_start(state.path(), &bundle, &name);
    let (code, out, err) = runtime_cli(
        state.path(),
        &[
            "exec",
            &name,
            "--",
            "sh",
            "-c",
            "echo $(hostname) $(cat /proc/1/cmdline | tr '\\0' ' '); exit 5",
        ],
    );
    assert_eq!(code, Some(5), "{out}{err}");
    assert_eq!(
        out.trim(),
        "box sleep 60",
        "the container's hostname and pid 1"
    );
    let (code, _, err) = runtime_cli(state.path(), &["exec", &name, "--", "no-such-program"]);
    assert_eq!(code, Some(127));
    assert!(err.contains("execve(no-such-program): ENOENT"), "{err}");
    let (code, _, err) = runtime_cli(state.path(), &["delete", "--force", &name]);
    assert_eq!(code, Some(0), "{err}");
    let (code, _, err) = runtime_cli(state.path(), &["exec", &name, "--", "true"]);
    assert_eq!(code, Some(1));
    assert!(err.contains("does not exist"), "{err}");
}

#[test]
fn images_import_from_oci_and_docker_archives_and_corruption_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/busybox-image.sh");
    let build = |out: &Path, kind: &str| {
        let status = std::process::Command::new("sh")
            .arg(&script)
            .arg(out)
            .arg(kind)
            .status()
            .unwrap();
        assert!(status.success(), "building the busybox image failed");
    };
    let (oci, docker) = (dir.path().join("oci.tar"), dir.path().join("docker.tar"));
    build(&oci, "oci");
    build(&docker, "docker");
    let store = dir.path().join("store");
    let image = |args: &[&str]| crate::pods::image_cli(&store, args);
    let (code, out, err) = image(&["import", oci.to_str().unwrap(), "--name", "busybox:oci"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.starts_with("busybox:oci sha256:"), "{out}");
    // The layer's digest, from the imported manifest.
    let manifest = out
        .split_whitespace()
        .nth(1)
        .unwrap()
        .trim_start_matches("sha256:")
        .to_string();
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(store.join("blobs/sha256").join(&manifest)).unwrap())
            .unwrap();
    let layer = manifest["layers"][0]["digest"]
        .as_str()
        .unwrap()
        .to_string();
    let (code, _, err) = image(&[
        "import",
        docker.to_str().unwrap(),
        "--name",
        "busybox:docker",
    ]);
    assert_eq!(code, Some(0), "{err}");
    let (_, listed, _) = image(&["ls"]);
    assert!(
        listed.contains("busybox:oci") && listed.contains("busybox:docker"),
        "{listed}"
    );
    // Both archives hold the same layer and config: stored once.
    let blobs = std::fs::read_dir(store.join("blobs/sha256"))
        .unwrap()
        .count();
    assert_eq!(
        blobs, 4,
        "the layer and the config are shared; two manifests"
    );
    // Corrupt the layer inside the OCI archive: the import is refused, naming the blob.
    let mut bytes = std::fs::read(&oci).unwrap();
    let at = bytes
        .windows(8)
        .position(|w| w == b"root:x:0")
        .expect("the passwd file in the layer");
    bytes[at] = b'R';
    std::fs::write(&oci, &bytes).unwrap();
    let (code, _, err) = image(&["import", oci.to_str().unwrap(), "--name", "corrupt"]);
    assert_eq!(code, Some(1));
    assert!(
        err.contains(&format!(
            "blob {layer} is corrupt: its content hashes to sha256:"
        )),
        "{err}"
    );
    let (_, listed, _) = image(&["ls"]);
    assert!(!listed.contains("corrupt"), "{listed}");
    let (code, _, err) = image(&["rm", "busybox:oci"]);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(
        std::fs::read_dir(store.join("blobs/sha256"))
            .unwrap()
            .count(),
        3,
        "the shared layer stays"
    );
    let (code, _, err) = image(&["rm", "busybox:docker"]);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(
        std::fs::read_dir(store.join("blobs/sha256"))
            .unwrap()
            .count(),
        0
    );
}
