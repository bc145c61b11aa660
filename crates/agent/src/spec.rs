//! A container of a pod as an OCI runtime spec (`config.json`): what runs (the image's
//! entrypoint and command as `command`/`args` override them, `$(VAR)` expanded), its
//! environment, working directory, user, capabilities, mounts and cgroup limits. Pure.

use std::collections::BTreeMap;

use flotilla_runtime::images::ImageConfig;
use flotilla_runtime::init::DEFAULT_CAPABILITIES;
use k8s_openapi::api::core::v1::{Container, Pod};
use serde_json::{json, Value};

use crate::env::{expand, ConfigError};

/// The init containers, then the app containers.
pub fn all_containers(pod: &Pod) -> impl Iterator<Item = &Container> {
    let spec = pod.spec.as_ref();
    spec.and_then(|s| s.init_containers.as_ref())
        .into_iter()
        .flatten()
        .chain(spec.map(|s| s.containers.iter()).into_iter().flatten())
}

/// The runtime's id of a pod's sandbox: the pod's uid (unique in the cluster, so every node
/// of a lab on one host has its own cgroups).
pub fn sandbox_id(uid: &str) -> String {
    uid.to_string()
}

/// The runtime's id of a pod's container.
pub fn container_id(uid: &str, name: &str) -> String {
    format!("{uid}_{name}")
}

/// Every capability, for a privileged container.
const ALL_CAPABILITIES: [&str; 41] = [
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN",
    "CAP_NET_RAW",
    "CAP_IPC_LOCK",
    "CAP_IPC_OWNER",
    "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN",
    "CAP_SYS_BOOT",
    "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG",
    "CAP_MKNOD",
    "CAP_LEASE",
    "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL",
    "CAP_SETFCAP",
    "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN",
    "CAP_SYSLOG",
    "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND",
    "CAP_AUDIT_READ",
    "CAP_PERFMON",
    "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
];

/// At most this many processes and threads in one container (a fork bomb stays in its pod).
pub const PIDS_LIMIT: i64 = 4096;

/// A volume mounted into the container.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mount {
    pub destination: String,
    pub source: std::path::PathBuf,
    pub read_only: bool,
}

/// What the process runs: `command` replaces the image's entrypoint (and drops its command),
/// `args` replaces the image's command; both expanded with the environment.
pub fn process_args(
    container: &Container,
    image: &ImageConfig,
    env: &BTreeMap<String, String>,
) -> Vec<String> {
    let command = container.command.clone().unwrap_or_default();
    let args = container.args.clone().unwrap_or_default();
    let (command, args) = match (command.is_empty(), args.is_empty()) {
        (false, _) => (
            command.iter().map(|c| expand(c, env)).collect(),
            args.iter().map(|a| expand(a, env)).collect(),
        ),
        (true, false) => (
            image.entrypoint.clone(),
            args.iter().map(|a| expand(a, env)).collect(),
        ),
        (true, true) => (image.entrypoint.clone(), image.cmd.clone()),
    };
    command.into_iter().chain(args).collect::<Vec<String>>()
}

fn numeric_user(user: &str) -> (Option<i64>, Option<i64>) {
    let (u, g) = match user.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (user, None),
    };
    (u.parse().ok(), g.and_then(|g| g.parse().ok()))
}

/// The OCI `config.json` of `container`.
pub fn oci_config(
    pod: &Pod,
    container: &Container,
    image: &ImageConfig,
    env: &[(String, String)],
    mounts: &[Mount],
) -> Result<Value, ConfigError> {
    let pod_sc = pod.spec.as_ref().and_then(|s| s.security_context.as_ref());
    let sc = container.security_context.as_ref();
    // The environment: the image's, then the container's.
    let mut vars: BTreeMap<String, String> = BTreeMap::new();
    let mut order: Vec<String> = Vec::new();
    for (k, v) in image
        .env
        .iter()
        .filter_map(|e| e.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .chain(env.iter().cloned())
    {
        if vars.insert(k.clone(), v).is_none() {
            order.push(k);
        }
    }
    let tty = container.tty == Some(true);
    // A terminal's programs need to know its kind, as the CRI runtimes set it.
    if tty && !vars.contains_key("TERM") {
        order.push("TERM".into());
        vars.insert("TERM".into(), "xterm".into());
    }
    if !vars.contains_key("PATH") {
        order.insert(0, "PATH".into());
        vars.insert(
            "PATH".into(),
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into(),
        );
    }
    let hostname = pod.metadata.name.clone().unwrap_or_default();
    if !vars.contains_key("HOSTNAME") {
        order.push("HOSTNAME".into());
        vars.insert("HOSTNAME".into(), hostname);
    }
    let args = process_args(container, image, &vars);
    if args.is_empty() {
        return Err(ConfigError(format!(
            "container {:?}: no command given and image {} has none",
            container.name,
            container.image.as_deref().unwrap_or("")
        )));
    }
    let env: Vec<String> = order.iter().map(|k| format!("{k}={}", vars[k])).collect();

    let (image_uid, image_gid) = numeric_user(&image.user);
    if !image.user.is_empty() && image_uid.is_none() && sc.and_then(|s| s.run_as_user).is_none() {
        return Err(ConfigError(format!(
            "image {} runs as user {:?}, which is not numeric: set securityContext.runAsUser",
            container.image.as_deref().unwrap_or(""),
            image.user
        )));
    }
    let uid = sc
        .and_then(|s| s.run_as_user)
        .or(pod_sc.and_then(|s| s.run_as_user))
        .or(image_uid)
        .unwrap_or(0);
    let gid = sc
        .and_then(|s| s.run_as_group)
        .or(pod_sc.and_then(|s| s.run_as_group))
        .or(image_gid)
        .unwrap_or(0);
    let non_root = sc
        .and_then(|s| s.run_as_non_root)
        .or(pod_sc.and_then(|s| s.run_as_non_root))
        == Some(true);
    if non_root && uid == 0 {
        return Err(ConfigError(
            "container has runAsNonRoot and image will run as root".into(),
        ));
    }
    let groups: Vec<i64> = pod_sc
        .and_then(|s| s.supplemental_groups.clone())
        .unwrap_or_default()
        .into_iter()
        .chain(pod_sc.and_then(|s| s.fs_group))
        .collect();

    let privileged = sc.and_then(|s| s.privileged) == Some(true);
    let mut caps: Vec<String> = if privileged {
        ALL_CAPABILITIES.iter().map(|c| c.to_string()).collect()
    } else {
        DEFAULT_CAPABILITIES.iter().map(|c| c.to_string()).collect()
    };
    let cap_name = |c: &str| {
        let c = c.to_ascii_uppercase();
        if c.starts_with("CAP_") {
            c
        } else {
            format!("CAP_{c}")
        }
    };
    if let Some(c) = sc.and_then(|s| s.capabilities.as_ref()) {
        for add in c.add.iter().flatten() {
            let name = cap_name(add);
            if name == "CAP_ALL" {
                caps = ALL_CAPABILITIES.iter().map(|c| c.to_string()).collect();
            } else if !caps.contains(&name) {
                caps.push(name);
            }
        }
        for drop in c.drop.iter().flatten() {
            let name = cap_name(drop);
            if name == "CAP_ALL" {
                caps.clear();
            } else {
                caps.retain(|c| *c != name);
            }
        }
    }
    let no_new_privs = !privileged && sc.and_then(|s| s.allow_privilege_escalation) == Some(false);
    let read_only_root = sc.and_then(|s| s.read_only_root_filesystem) == Some(true);
    let cwd = container
        .working_dir
        .clone()
        .filter(|w| !w.is_empty())
        .or_else(|| (!image.working_dir.is_empty()).then(|| image.working_dir.clone()))
        .unwrap_or_else(|| "/".into());

    let mut oci_mounts = vec![
        json!({"destination": "/proc", "type": "proc", "source": "proc", "options": ["nosuid", "noexec", "nodev"]}),
        json!({"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]}),
        json!({"destination": "/dev/pts", "type": "devpts", "source": "devpts", "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"]}),
        json!({"destination": "/dev/shm", "type": "tmpfs", "source": "shm", "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]}),
        json!({"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue", "options": ["nosuid", "noexec", "nodev"]}),
        json!({"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev", if privileged { "rw" } else { "ro" }]}),
    ];
    for m in mounts {
        oci_mounts.push(json!({
            "destination": m.destination,
            "type": "bind",
            "source": m.source,
            "options": ["rbind", "rprivate", if m.read_only { "ro" } else { "rw" }],
        }));
    }

    let limits = crate::resources::limits(container);
    let mut resources = json!({
        "cpu": {"shares": limits.cpu_shares, "period": limits.cpu_period_us},
        "pids": {"limit": PIDS_LIMIT},
    });
    if let Some(q) = limits.cpu_quota_us {
        resources["cpu"]["quota"] = json!(q);
    }
    if let Some(m) = limits.memory_bytes {
        resources["memory"] = json!({"limit": m});
    }
    let (masked, readonly): (Vec<&str>, Vec<&str>) = if privileged {
        (Vec::new(), Vec::new())
    } else {
        (
            vec![
                "/proc/acpi",
                "/proc/kcore",
                "/proc/keys",
                "/proc/latency_stats",
                "/proc/timer_list",
                "/proc/timer_stats",
                "/proc/sched_debug",
                "/proc/scsi",
                "/sys/firmware",
            ],
            vec![
                "/proc/asound",
                "/proc/bus",
                "/proc/fs",
                "/proc/irq",
                "/proc/sys",
                "/proc/sysrq-trigger",
            ],
        )
    };
    Ok(json!({
        "ociVersion": "1.0.2",
        "process": {
            "terminal": tty,
            "user": {"uid": uid, "gid": gid, "additionalGids": groups},
            "args": args,
            "env": env,
            "cwd": cwd,
            "capabilities": {
                "bounding": caps,
                "effective": caps,
                "permitted": caps,
            },
            "noNewPrivileges": no_new_privs,
        },
        "root": {"path": "rootfs", "readonly": read_only_root},
        "mounts": oci_mounts,
        "linux": {
            "namespaces": [{"type": "pid"}, {"type": "mount"}],
            "resources": resources,
            "maskedPaths": masked,
            "readonlyPaths": readonly,
        },
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(container: Value) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": "web", "namespace": "default", "uid": "u1"},
            "spec": {"containers": [container]},
        }))
        .unwrap()
    }

    fn image() -> ImageConfig {
        ImageConfig {
            entrypoint: vec!["/entry".into()],
            cmd: vec!["serve".into()],
            env: vec!["PATH=/bin".into(), "LANG=C".into()],
            ..ImageConfig::default()
        }
    }

    fn config(c: Value) -> Result<Value, ConfigError> {
        let p = pod(c);
        let container = p.spec.as_ref().unwrap().containers[0].clone();
        oci_config(
            &p,
            &container,
            &image(),
            &[("LANG".into(), "de".into()), ("X".into(), "1".into())],
            &[Mount {
                destination: "/data".into(),
                source: "/v/data".into(),
                read_only: true,
            }],
        )
    }

    #[test]
    fn command_and_args_override_the_image_as_kubernetes_says() {
        let img = image();
        let env = BTreeMap::from([("X".to_string(), "1".to_string())]);
        let c = |v: Value| -> Container { serde_json::from_value(v).unwrap() };
        assert_eq!(
            process_args(&c(json!({"name": "a"})), &img, &env),
            ["/entry", "serve"]
        );
        assert_eq!(
            process_args(&c(json!({"name": "a", "args": ["x$(X)"]})), &img, &env),
            ["/entry", "x1"]
        );
        assert_eq!(
            process_args(&c(json!({"name": "a", "command": ["sh"]})), &img, &env),
            ["sh"]
        );
        assert_eq!(
            process_args(
                &c(json!({"name": "a", "command": ["sh"], "args": ["-c", "$(X)"]})),
                &img,
                &env
            ),
            ["sh", "-c", "1"]
        );
    }

    #[test]
    fn the_config_carries_env_user_caps_mounts_and_limits() {
        let c = config(json!({
            "name": "app", "image": "busybox", "workingDir": "/srv",
            "resources": {"limits": {"memory": "16Mi", "cpu": "100m"}},
            "securityContext": {"runAsUser": 1000, "runAsGroup": 2000, "readOnlyRootFilesystem": true,
                "allowPrivilegeEscalation": false,
                "capabilities": {"add": ["NET_ADMIN"], "drop": ["KILL"]}},
        }))
        .unwrap();
        let env: Vec<&str> = c["process"]["env"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        assert_eq!(env, ["PATH=/bin", "LANG=de", "X=1", "HOSTNAME=web"]);
        assert_eq!(
            c["process"]["user"],
            json!({"uid": 1000, "gid": 2000, "additionalGids": []})
        );
        assert_eq!(c["process"]["cwd"], "/srv");
        assert_eq!(c["process"]["noNewPrivileges"], true);
        assert_eq!(c["root"]["readonly"], true);
        let caps = c["process"]["capabilities"]["bounding"].as_array().unwrap();
        assert!(caps.contains(&json!("CAP_NET_ADMIN")));
        assert!(!caps.contains(&json!("CAP_KILL")));
        assert_eq!(c["linux"]["resources"]["memory"]["limit"], 16 << 20);
        assert_eq!(c["linux"]["resources"]["cpu"]["quota"], 10_000);
        assert_eq!(c["linux"]["resources"]["pids"]["limit"], PIDS_LIMIT);
        let mounts = c["mounts"].as_array().unwrap();
        let data = mounts.iter().find(|m| m["destination"] == "/data").unwrap();
        assert_eq!(data["source"], "/v/data");
        assert!(data["options"].as_array().unwrap().contains(&json!("ro")));
        // The config is one the runtime takes.
        let _: oci_spec::runtime::Spec = serde_json::from_value(c).unwrap();
    }

    #[test]
    fn run_as_non_root_refuses_root() {
        let err = config(json!({"name": "app", "image": "busybox",
            "securityContext": {"runAsNonRoot": true}}))
        .unwrap_err();
        assert!(err.0.contains("runAsNonRoot"), "{err}");
    }
}
