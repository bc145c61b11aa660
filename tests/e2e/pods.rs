//! Issue 5: pod sandboxes and containers from images, through `flotilla runtime` and
//! `flotilla image` as root: pods reach each other by address over the bridge, a pod's
//! containers share localhost and IPC, and a container's root is its image's layers (unpacked
//! once, whiteouts honoured) under a writable layer of its own.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use flotilla_tests::{busybox_rootfs, eventually, runtime_cli, spec_bundle};

fn require_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "the runtime tests need root (CI runs them as root)"
    );
}

/// A bridge and pod CIDR of this test's own (tests run at the same time), removed at the end
/// with whatever a failed test left on it (veths, namespace and root mounts).
pub struct TestNet {
    pub bridge: String,
    pub cidr: String,
    pub ipam: tempfile::TempDir,
    /// The runtime roots sandboxes were made in.
    states: std::sync::Mutex<Vec<PathBuf>>,
}

impl TestNet {
    pub fn new(n: u8) -> TestNet {
        let pid = std::process::id();
        TestNet {
            bridge: format!("fltt{}x{n}", pid % 100_000),
            cidr: format!("10.{}.{}.0/24", 200 + n, pid % 256),
            ipam: tempfile::tempdir().unwrap(),
            states: Default::default(),
        }
    }

    /// Cleans up what sandboxes of runtime root `state` leave, if the test fails.
    pub fn track(&self, state: &Path) {
        let mut states = self.states.lock().unwrap();
        if !states.iter().any(|s| s == state) {
            states.push(state.to_path_buf());
        }
    }

    /// `sandbox create` in this network; returns the sandbox as JSON.
    pub fn sandbox(&self, state: &Path, id: &str, hostname: &str) -> serde_json::Value {
        self.track(state);
        let (code, out, err) = runtime_cli(
            state,
            &[
                "sandbox",
                "create",
                "--bridge",
                &self.bridge,
                "--pod-cidr",
                &self.cidr,
                "--ipam-dir",
                self.ipam.path().to_str().unwrap(),
                "--hostname",
                hostname,
                id,
            ],
        );
        assert_eq!(code, Some(0), "sandbox create {id}: {err}");
        serde_json::from_str(&out).unwrap()
    }

    /// The links attached to the bridge.
    pub fn ports(&self) -> usize {
        std::fs::read_dir(format!("/sys/class/net/{}/brif", self.bridge))
            .map(|d| d.count())
            .unwrap_or(0)
    }
}

impl Drop for TestNet {
    fn drop(&mut self) {
        // After a passing test there is nothing left but the bridge; after a failing one,
        // detach what it mounted and remove its veths, so that it leaks nothing either.
        let states = self
            .states
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        for point in mounts.lines().filter_map(|l| l.split(' ').nth(4)) {
            if states.iter().any(|s| Path::new(point).starts_with(s)) {
                let _ = Command::new("umount").args(["-l", point]).status();
            }
        }
        let ports = std::fs::read_dir(format!("/sys/class/net/{}/brif", self.bridge));
        for port in ports.into_iter().flatten().flatten() {
            let _ = Command::new("ip")
                .args(["link", "del", &port.file_name().to_string_lossy()])
                .status();
        }
        let _ = Command::new("ip")
            .args(["link", "del", &self.bridge])
            .status();
    }
}

/// `flotilla image --root STORE ARGS`: (exit code, stdout, stderr).
pub fn image_cli(store: &Path, args: &[&str]) -> (Option<i32>, String, String) {
    let out = Command::new(flotilla_tests::flotilla_bin())
        .args(["image", "--root", store.to_str().unwrap()])
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// An image store in `dir` holding `busybox` (built by `deploy/busybox-image.sh`).
pub fn busybox_store(dir: &Path) -> PathBuf {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/busybox-image.sh");
    let archive = dir.join("busybox.tar");
    let status = Command::new("sh")
        .arg(&script)
        .arg(&archive)
        .status()
        .unwrap();
    assert!(status.success(), "building the busybox image failed");
    let store = dir.join("images");
    let (code, _, err) = image_cli(
        &store,
        &["import", archive.to_str().unwrap(), "--name", "busybox"],
    );
    assert_eq!(code, Some(0), "{err}");
    store
}

/// `create` a container of `image` in `sandbox` running `args`, then `start` it.
pub fn start_in_pod(
    state: &Path,
    store: &Path,
    image: &str,
    sandbox: &str,
    id: &str,
    args: &[&str],
) {
    let dir = state.join(format!("bundle-{id}"));
    let bundle = spec_bundle(&dir, args, |_| {});
    let (code, _, err) = runtime_cli(
        state,
        &[
            "create",
            "--bundle",
            bundle.to_str().unwrap(),
            "--sandbox",
            sandbox,
            "--image",
            image,
            "--images",
            store.to_str().unwrap(),
            id,
        ],
    );
    assert_eq!(code, Some(0), "create {id}: {err}");
    let (code, _, err) = runtime_cli(state, &["start", id]);
    assert_eq!(code, Some(0), "start {id}: {err}");
}

/// `exec` in a container: (exit code, stdout).
fn exec(state: &Path, id: &str, script: &str) -> (Option<i32>, String) {
    let (code, out, _) = runtime_cli(state, &["exec", id, "--", "sh", "-c", script]);
    (code, out)
}

#[test]
fn pods_reach_each_other_by_address_and_share_localhost_and_ipc() {
    require_root();
    let net = TestNet::new(1);
    let dir = tempfile::tempdir().unwrap();
    let store = busybox_store(dir.path());
    // Container ids are host-wide in cgroups: make them ours.
    let state = dir.path().join("state");
    let id = |name: &str| format!("{name}-{}", std::process::id());
    let a = net.sandbox(&state, "pod-a", "pod-a");
    let b = net.sandbox(&state, "pod-b", "pod-b");
    let a_ip = a["ip"].as_str().unwrap().to_string();
    assert_ne!(a_ip, b["ip"].as_str().unwrap(), "two pods, two addresses");
    assert_eq!(net.ports(), 2, "one veth per pod on the bridge");

    let (web, side, log, client) = (id("web"), id("side"), id("log"), id("client"));
    let serve =
        "mkdir -p /www && echo hello-from-a > /www/index.html && exec httpd -f -p 8080 -h /www";
    start_in_pod(
        &state,
        &store,
        "busybox",
        "pod-a",
        &web,
        &["sh", "-c", serve],
    );
    start_in_pod(&state, &store, "busybox", "pod-a", &side, &["sleep", "600"]);
    start_in_pod(
        &state,
        &store,
        "busybox",
        "pod-a",
        &log,
        &["syslogd", "-n", "-C64"],
    );
    start_in_pod(
        &state,
        &store,
        "busybox",
        "pod-b",
        &client,
        &["sleep", "600"],
    );

    // Pod b reaches pod a's server by pod address, through the bridge.
    let fetch = format!("timeout 3 wget -qO- http://{a_ip}:8080/");
    let reached = eventually(Duration::from_secs(20), || {
        exec(&state, &client, &fetch) == (Some(0), "hello-from-a\n".into())
    });
    assert!(reached, "pod b never got pod a's page at {a_ip}:8080");
    // Another container of pod a reaches it on localhost.
    let (code, out) = exec(&state, &side, "timeout 3 wget -qO- http://127.0.0.1:8080/");
    assert_eq!((code, out.as_str()), (Some(0), "hello-from-a\n"));
    // Pod b has no server on its own localhost.
    let (code, _) = exec(
        &state,
        &client,
        "timeout 3 wget -qO- http://127.0.0.1:8080/",
    );
    assert_ne!(code, Some(0), "pod b's localhost is its own");

    // IPC: syslogd in one container keeps its log in a System V shared memory buffer, which
    // logread in another container of the same pod reads.
    let shared = eventually(Duration::from_secs(20), || {
        exec(&state, &log, "logger hello-ipc").0 == Some(0)
            && exec(&state, &side, "logread").1.contains("hello-ipc")
    });
    assert!(shared, "the pod's containers do not share IPC");
    let (code, out) = exec(&state, &client, "logread");
    assert!(
        code != Some(0) && !out.contains("hello-ipc"),
        "pod b sees pod a's IPC: {out}"
    );
    let ns = |c: &str, kind: &str| exec(&state, c, &format!("readlink /proc/self/ns/{kind}")).1;
    for kind in ["ipc", "net", "uts"] {
        assert_eq!(
            ns(&web, kind),
            ns(&side, kind),
            "{kind} namespace shared in a pod"
        );
        assert_ne!(
            ns(&web, kind),
            ns(&client, kind),
            "{kind} namespace differs between pods"
        );
    }
    assert_ne!(
        ns(&web, "pid"),
        ns(&side, "pid"),
        "each container has its own pids"
    );
    assert_eq!(exec(&state, &side, "hostname").1, "pod-a\n");
    assert!(exec(&state, &side, "cat /etc/hosts")
        .1
        .contains(&format!("{a_ip}\tpod-a")));

    // A sandbox with running containers is not deleted without --force.
    let (code, _, err) = runtime_cli(&state, &["sandbox", "delete", "pod-a"]);
    assert_eq!(code, Some(1));
    assert!(err.contains("is running"), "{err}");
    for pod in ["pod-a", "pod-b"] {
        let (code, _, err) = runtime_cli(&state, &["sandbox", "delete", "--force", pod]);
        assert_eq!(code, Some(0), "{err}");
    }
    assert_eq!(net.ports(), 0, "the veths are gone");
    assert_eq!(
        std::fs::read_dir(net.ipam.path()).unwrap().count(),
        0,
        "addresses released"
    );
}

fn tar_layer(entries: &[(&str, Option<&[u8]>)], gzip: bool) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (name, data) in entries {
        let mut h = tar::Header::new_gnu();
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        match data {
            Some(data) => {
                h.set_entry_type(tar::EntryType::Regular);
                h.set_size(data.len() as u64);
                h.set_mode(0o644);
                h.set_cksum();
                b.append_data(&mut h, name, *data).unwrap();
            }
            None => {
                h.set_entry_type(tar::EntryType::Directory);
                h.set_size(0);
                h.set_mode(0o755);
                h.set_cksum();
                b.append_data(&mut h, name, std::io::empty()).unwrap();
            }
        }
    }
    let plain = b.into_inner().unwrap();
    if !gzip {
        return plain;
    }
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&plain).unwrap();
    gz.finish().unwrap()
}

fn sha(bytes: &[u8]) -> String {
    use sha2::Digest;
    format!("sha256:{}", hex::encode(sha2::Sha256::digest(bytes)))
}

/// An OCI archive of three layers: busybox (plain tar); `/etc/motd` and `/data/{a,b}` (gzip);
/// a whiteout of `/etc/motd` and an opaque `/data` holding only `new` (gzip).
fn layered_archive(dir: &Path) -> PathBuf {
    let rootfs = dir.join("rootfs");
    busybox_rootfs(&rootfs);
    let mut base = tar::Builder::new(Vec::new());
    base.follow_symlinks(false);
    base.append_dir_all(".", &rootfs).unwrap();
    let base = base.into_inner().unwrap();
    let middle = tar_layer(
        &[
            ("etc/motd", Some(b"old\n")),
            ("data/", None),
            ("data/a", Some(b"a\n")),
            ("data/b", Some(b"b\n")),
        ],
        true,
    );
    let top = tar_layer(
        &[
            ("etc/.wh.motd", Some(b"")),
            ("data/", None),
            ("data/.wh..wh..opq", Some(b"")),
            ("data/new", Some(b"new\n")),
        ],
        true,
    );
    let layers = [base, middle, top];
    let config = serde_json::to_vec(&serde_json::json!({
        "architecture": "amd64", "os": "linux", "config": {"Env": ["PATH=/bin"]},
        "rootfs": {"type": "layers", "diff_ids": []},
    }))
    .unwrap();
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": sha(&config), "size": config.len()},
        "layers": layers.iter().enumerate().map(|(i, l)| serde_json::json!({
            "mediaType": if i == 0 { "application/vnd.oci.image.layer.v1.tar" } else { "application/vnd.oci.image.layer.v1.tar+gzip" },
            "digest": sha(l), "size": l.len(),
        })).collect::<Vec<_>>(),
    }))
    .unwrap();
    let index = serde_json::to_vec(&serde_json::json!({"schemaVersion": 2, "manifests": [
        {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": sha(&manifest), "size": manifest.len()}]}))
    .unwrap();
    let path = dir.join("layered.tar");
    let mut archive = tar::Builder::new(std::fs::File::create(&path).unwrap());
    let mut add = |name: String, data: &[u8]| {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        archive.append_data(&mut h, name, data).unwrap();
    };
    add("oci-layout".into(), br#"{"imageLayoutVersion":"1.0.0"}"#);
    add("index.json".into(), &index);
    let blob = |d: &str| format!("blobs/sha256/{}", d.trim_start_matches("sha256:"));
    add(blob(&sha(&manifest)), &manifest);
    add(blob(&sha(&config)), &config);
    for l in &layers {
        add(blob(&sha(l)), l);
    }
    archive.finish().unwrap();
    path
}

/// The unpacked layer directories of a store.
fn layer_dirs(store: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(store.join("layers/sha256"))
        .map(|d| {
            d.flatten()
                .map(|e| e.path())
                .filter(|p| !p.file_name().unwrap().to_string_lossy().starts_with('.'))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn containers_from_an_image_share_its_layers_and_write_only_their_own() {
    require_root();
    let net = TestNet::new(2);
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("images");
    let archive = layered_archive(dir.path());
    let (code, _, err) = image_cli(
        &store,
        &["import", archive.to_str().unwrap(), "--name", "layered"],
    );
    assert_eq!(code, Some(0), "{err}");
    let state = dir.path().join("state");
    net.sandbox(&state, "pod", "layered-pod");
    let (one, two) = (
        format!("one-{}", std::process::id()),
        format!("two-{}", std::process::id()),
    );
    start_in_pod(&state, &store, "layered", "pod", &one, &["sleep", "600"]);
    start_in_pod(&state, &store, "layered", "pod", &two, &["sleep", "600"]);
    assert_eq!(
        layer_dirs(&store).len(),
        3,
        "each layer unpacked once for both containers"
    );

    // What a container sees: pid 1 is its own, its pod's hostname, lo and eth0 only, the
    // image's files with the whiteouts applied, nothing of the host.
    let script = "echo pid1=$(cat /proc/1/cmdline | tr '\\0' ' '); echo host=$(hostname); \
        echo links=$(ls /sys/class/net | tr '\\n' ,); echo data=$(ls /data | tr '\\n' ,); \
        test -e /etc/motd && echo motd=present || echo motd=hidden; \
        echo procs=$(ls /proc | grep -c '^[0-9]'); \
        echo hostmounts=$(grep -c ' /work\\| /var/cache\\| /tmp' /proc/mounts)";
    let (code, out) = exec(&state, &one, script);
    assert_eq!(code, Some(0), "{out}");
    let mut lines: Vec<&str> = out.lines().collect();
    // The sleep, this shell, its subshell, ls and grep: the host's hundreds are not there.
    let procs: usize = lines
        .remove(5)
        .trim_start_matches("procs=")
        .parse()
        .unwrap();
    assert!(procs <= 5, "host processes visible: {out}");
    assert_eq!(
        lines,
        [
            "pid1=sleep 600",
            "host=layered-pod",
            "links=eth0,lo,",
            "data=new,",
            "motd=hidden",
            "hostmounts=0",
        ],
        "{out}"
    );

    // Writes (a new file, a changed image file, a deleted image file) stay in the container.
    let (code, out) = exec(
        &state,
        &one,
        "echo mine > /data/written && echo changed > /etc/passwd && rm /bin/cat && echo ok",
    );
    assert_eq!((code, out.as_str()), (Some(0), "ok\n"));
    let (_, out) = exec(
        &state,
        &two,
        "ls /data; cat /etc/passwd | head -1; test -e /bin/cat && echo cat-present",
    );
    assert_eq!(
        out, "new\nroot:x:0:0:root:/:/bin/sh\ncat-present\n",
        "the other container sees the image"
    );
    for layer in layer_dirs(&store) {
        assert!(
            !layer.join("data/written").exists(),
            "a write reached {}",
            layer.display()
        );
        if layer.join("etc/passwd").exists() {
            assert!(std::fs::read_to_string(layer.join("etc/passwd"))
                .unwrap()
                .starts_with("root:x:0:0"));
            assert!(
                layer.join("bin/cat").symlink_metadata().is_ok(),
                "a delete reached the layer"
            );
        }
    }

    // Removing the image while containers use it keeps the layers; the last container gone,
    // they are collected.
    let (code, _, err) = image_cli(&store, &["rm", "layered"]);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(layer_dirs(&store).len(), 3, "layers in use stay");
    assert_eq!(exec(&state, &two, "cat /data/new").1, "new\n");
    for c in [&one, &two] {
        let (code, _, err) = runtime_cli(&state, &["delete", "--force", c]);
        assert_eq!(code, Some(0), "{err}");
    }
    assert_eq!(layer_dirs(&store).len(), 0, "unused layers are collected");
    let (code, _, err) = runtime_cli(&state, &["sandbox", "delete", "pod"]);
    assert_eq!(code, Some(0), "{err}");
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        !mounts.contains(dir.path().to_str().unwrap()),
        "a mount is left: {mounts}"
    );

    // A missing sandbox or image is a clear error and leaves no container behind.
    let bundle = spec_bundle(&dir.path().join("b"), &["true"], |_| {});
    let store_s = store.to_str().unwrap();
    for (args, expected) in [
        (vec!["--sandbox", "gone"], "sandbox gone does not exist"),
        (
            vec!["--image", "missing:1", "--images", store_s],
            "no image named missing:1",
        ),
    ] {
        let mut all = vec!["create", "--bundle", bundle.to_str().unwrap()];
        all.extend(args);
        all.push("orphan");
        let (code, _, err) = runtime_cli(&state, &all);
        assert_eq!(code, Some(1), "{err}");
        assert!(err.contains(expected), "{err}");
        let (_, _, err) = runtime_cli(&state, &["state", "orphan"]);
        assert!(err.contains("does not exist"), "{err}");
    }
}

#[test]
fn exec_with_a_terminal_gets_one_of_the_containers_own_and_relays_input() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let bundle = flotilla_tests::busybox_bundle(&dir.path().join("b"), &["sleep", "600"], |_| {});
    let id = format!("tty-{}", std::process::id());
    let (code, _, err) = runtime_cli(
        &state,
        &["create", "--bundle", bundle.to_str().unwrap(), &id],
    );
    assert_eq!(code, Some(0), "{err}");
    let (code, _, err) = runtime_cli(&state, &["start", &id]);
    assert_eq!(code, Some(0), "{err}");
    // The command's stdin is a terminal of the container's devpts, its exit code comes back.
    let (code, out, err) = runtime_cli(
        &state,
        &[
            "exec",
            "-t",
            &id,
            "--",
            "sh",
            "-c",
            "tty; test -t 0 && echo stdin-is-a-tty; exit 3",
        ],
    );
    assert_eq!(code, Some(3), "{out}{err}");
    assert!(out.contains("/dev/pts/0\r\n"), "{out:?}");
    assert!(out.contains("stdin-is-a-tty\r\n"), "{out:?}");
    // Input typed into an interactive shell reaches it; its end is end-of-file.
    let mut shell = Command::new(flotilla_tests::flotilla_bin())
        .args([
            "runtime",
            "--root",
            state.to_str().unwrap(),
            "exec",
            "-t",
            &id,
            "--",
            "sh",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    shell
        .stdin
        .take()
        .unwrap()
        .write_all(b"echo sum=$((40+2))\nexit 4\n")
        .unwrap();
    let done = shell.wait_with_output().unwrap();
    let out = String::from_utf8_lossy(&done.stdout);
    assert_eq!(done.status.code(), Some(4), "{out}");
    assert!(out.contains("sum=42"), "{out:?}");
    let (code, _, err) = runtime_cli(&state, &["delete", "--force", &id]);
    assert_eq!(code, Some(0), "{err}");
}

#[test]
fn a_root_file_system_directory_imports_as_an_image_and_runs() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let rootfs = dir.path().join("rootfs");
    busybox_rootfs(&rootfs);
    std::fs::write(rootfs.join("etc/greeting"), "from a directory\n").unwrap();
    std::os::unix::fs::symlink("/etc/greeting", rootfs.join("greeting")).unwrap();
    let store = dir.path().join("images");
    let (code, out, err) = image_cli(
        &store,
        &["import", rootfs.to_str().unwrap(), "--name", "fromdir"],
    );
    assert_eq!(code, Some(0), "{err}");
    assert!(out.starts_with("fromdir sha256:"), "{out}");
    let state = dir.path().join("state");
    let bundle = spec_bundle(
        &dir.path().join("b"),
        &["sh", "-c", "cat /greeting; readlink /greeting"],
        |_| {},
    );
    let (code, out, err) = runtime_cli(
        &state,
        &[
            "run",
            "--bundle",
            bundle.to_str().unwrap(),
            "--image",
            "fromdir",
            "--images",
            store.to_str().unwrap(),
            &format!("fromdir-{}", std::process::id()),
        ],
    );
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(
        out, "from a directory\n/etc/greeting\n",
        "files and symlinks kept"
    );
    assert_eq!(
        layer_dirs(&store).len(),
        1,
        "the image's one layer stays unpacked for the next container"
    );
    let (code, _, err) = image_cli(&store, &["rm", "fromdir"]);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(layer_dirs(&store).len(), 0, "and goes with the image");
}

/// Issue 14: the agent's seam, `PodRuntime`, with the real runtime behind it, driven from a
/// multi-threaded async runtime as the node drives it: a pod's whole life, and calls at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_process_runtime_runs_a_pod_for_a_multi_threaded_caller() {
    use flotilla_runtime::{ContainerRequest, NodeNetwork, PodRuntime, ProcessRuntime, Status};
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let net = TestNet::new(7);
    let store = busybox_store(dir.path());
    let root = dir.path().join("state");
    net.track(&root);
    let rt = ProcessRuntime {
        binary: flotilla_tests::flotilla_bin(),
        root: root.clone(),
        images: store,
        network: NodeNetwork {
            bridge: net.bridge.clone(),
            pod_cidr: net.cidr.clone(),
            ipam_dir: net.ipam.path().to_path_buf(),
            dns: vec![],
            search: vec![],
        },
    };
    let sandbox = rt
        .create_sandbox(
            "pod1",
            &flotilla_runtime::SandboxRequest {
                hostname: "web".into(),
                host_network: false,
                dns: Some(flotilla_runtime::PodDns {
                    nameservers: vec!["10.96.0.10".parse().unwrap()],
                    searches: vec!["shop.svc.cluster.local".into(), "cluster.local".into()],
                    options: vec!["ndots:5".into()],
                }),
            },
        )
        .await
        .unwrap();
    assert_eq!(rt.sandboxes().await.unwrap(), ["pod1"]);
    let bundle = spec_bundle(
        &dir.path().join("bundle"),
        &["sh", "-c", "echo hello from the pod; exec sleep 600"],
        |_| {},
    );
    let request = ContainerRequest {
        bundle,
        sandbox: Some("pod1".into()),
        image: Some("busybox".into()),
        ..Default::default()
    };
    rt.create_container("pod1-app", &request).await.unwrap();
    rt.start_container("pod1-app").await.unwrap();
    let state = rt.container("pod1-app").await.unwrap().unwrap();
    assert_eq!(state.status, Status::Running);
    assert!(state.pid > 0 && state.ended.is_none(), "{state:?}");
    assert_eq!(state.sandbox.as_deref(), Some("pod1"));

    // The pod's resolv.conf is the one asked for.
    let resolv = rt
        .exec(
            "pod1-app",
            &["cat".into(), "/etc/resolv.conf".into()],
            Duration::from_secs(30),
        )
        .await
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&resolv.output),
        "nameserver 10.96.0.10\nsearch shop.svc.cluster.local cluster.local\noptions ndots:5\n"
    );

    // Calls at once from the node's threads: each exec sees the sandbox's hostname and address.
    let script = "cat /etc/hostname; ip -4 -o addr show eth0".to_string();
    let execs = (0..6).map(|_| {
        let (rt, script) = (rt.clone(), script.clone());
        async move {
            rt.exec(
                "pod1-app",
                &["sh".into(), "-c".into(), script],
                Duration::from_secs(30),
            )
            .await
            .unwrap()
        }
    });
    for out in futures::future::join_all(execs).await {
        let text = String::from_utf8_lossy(&out.output).into_owned();
        assert_eq!(out.code, 0, "{text}");
        assert!(text.starts_with("web\n"), "{text}");
        assert!(text.contains(&sandbox.ip.to_string()), "{text}");
    }
    let failed = rt
        .exec(
            "pod1-app",
            &["sh".into(), "-c".into(), "exit 3".into()],
            Duration::from_secs(30),
        )
        .await
        .unwrap();
    assert_eq!(failed.code, 3);
    let logged = flotilla_tests::wait_until(Duration::from_secs(10), || {
        let rt = rt.clone();
        async move {
            let logs = rt.logs("pod1-app").await.ok()?;
            logs.contains("hello from the pod").then_some(())
        }
    })
    .await;
    assert!(logged.is_some(), "{:?}", rt.logs("pod1-app").await);

    // SIGKILL ends it (128 + 9; a pid namespace's init ignores an unhandled SIGTERM, which is
    // why the agent escalates), and everything goes, twice over.
    rt.kill_container("pod1-app", flotilla_sys::Signal::SIGKILL)
        .await
        .unwrap();
    let ended = flotilla_tests::wait_until(Duration::from_secs(10), || {
        let rt = rt.clone();
        async move { rt.container("pod1-app").await.ok()??.ended }
    })
    .await
    .expect("the container ends");
    assert_eq!(ended.code, 137);
    rt.delete_container("pod1-app").await.unwrap();
    assert!(rt.container("pod1-app").await.unwrap().is_none());
    rt.delete_container("pod1-app").await.unwrap();
    rt.delete_sandbox("pod1").await.unwrap();
    rt.delete_sandbox("pod1").await.unwrap();
    assert!(rt.sandbox("pod1").await.unwrap().is_none());
    assert!(rt.containers().await.unwrap().is_empty());
    assert_eq!(net.ports(), 0, "the pod's veth is gone");
}
