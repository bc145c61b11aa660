//! Probes: liveness, readiness and startup, by `exec` in the container, `httpGet` to the pod's
//! address, or `tcpSocket`. Each running container with probes has one task per probe kind,
//! for the life of that container instance; a verdict that changes is kept in [`Results`] and
//! the pod queued, so the worker acts on it (restart, `Ready`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use flotilla_runtime::PodRuntime;
use k8s_openapi::api::core::v1::{Container, Probe};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

/// What a probe run found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    Success,
    Failure(String),
}

/// The port a probe names: a number, or the name of one of the container's ports.
fn port(c: &Container, port: &IntOrString) -> Result<u16, String> {
    match port {
        IntOrString::Int(n) => u16::try_from(*n).map_err(|_| format!("invalid port {n}")),
        IntOrString::String(name) => c
            .ports
            .iter()
            .flatten()
            .find(|p| p.name.as_deref() == Some(name))
            .and_then(|p| u16::try_from(p.container_port).ok())
            .ok_or_else(|| format!("the container has no port named {name:?}")),
    }
}

/// Runs `probe` once against container `id` of a pod at `pod_ip`.
pub async fn run_once(
    runtime: &dyn PodRuntime,
    container: &Container,
    id: &str,
    pod_ip: &str,
    probe: &Probe,
) -> Outcome {
    let timeout = Duration::from_secs(probe.timeout_seconds.unwrap_or(1).max(1) as u64);
    if let Some(exec) = &probe.exec {
        let command = exec.command.clone().unwrap_or_default();
        return match runtime.exec(id, &command, timeout).await {
            Ok(out) if out.code == 0 => Outcome::Success,
            Ok(out) => Outcome::Failure(format!(
                "command {:?} exited with {}: {}",
                command.join(" "),
                out.code,
                String::from_utf8_lossy(&out.output).trim()
            )),
            Err(e) => Outcome::Failure(e.to_string()),
        };
    }
    if let Some(tcp) = &probe.tcp_socket {
        let port = match port(container, &tcp.port) {
            Ok(p) => p,
            Err(e) => return Outcome::Failure(e),
        };
        let host = tcp.host.clone().unwrap_or_else(|| pod_ip.to_string());
        return match tokio::time::timeout(
            timeout,
            tokio::net::TcpStream::connect((host.as_str(), port)),
        )
        .await
        {
            Ok(Ok(_)) => Outcome::Success,
            Ok(Err(e)) => Outcome::Failure(format!("dial tcp {host}:{port}: {e}")),
            Err(_) => Outcome::Failure(format!("dial tcp {host}:{port}: i/o timeout")),
        };
    }
    if let Some(http) = &probe.http_get {
        let port = match port(container, &http.port) {
            Ok(p) => p,
            Err(e) => return Outcome::Failure(e),
        };
        if http.scheme.as_deref() == Some("HTTPS") {
            return Outcome::Failure("HTTPS probes are not supported yet".into());
        }
        let host = http.host.clone().unwrap_or_else(|| pod_ip.to_string());
        let path = http.path.clone().unwrap_or_else(|| "/".into());
        let mut request = format!(
            "GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUser-Agent: kube-probe/1.32\r\nAccept: */*\r\nConnection: close\r\n"
        );
        for h in http.http_headers.iter().flatten() {
            request.push_str(&format!("{}: {}\r\n", h.name, h.value));
        }
        request.push_str("\r\n");
        let url = format!("http://{host}:{port}{path}");
        let get = async {
            let mut s = tokio::net::TcpStream::connect((host.as_str(), port)).await?;
            s.write_all(request.as_bytes()).await?;
            let mut head = [0u8; 64];
            let mut n = 0;
            while n < head.len() {
                let r = s.read(&mut head[n..]).await?;
                if r == 0 {
                    break;
                }
                n += r;
                if head[..n].contains(&b'\n') {
                    break;
                }
            }
            Ok::<_, std::io::Error>(String::from_utf8_lossy(&head[..n]).into_owned())
        };
        return match tokio::time::timeout(timeout, get).await {
            Ok(Ok(line)) => {
                let code: u16 = line
                    .split_whitespace()
                    .nth(1)
                    .and_then(|c| c.parse().ok())
                    .unwrap_or(0);
                if (200..400).contains(&code) {
                    Outcome::Success
                } else {
                    Outcome::Failure(format!("HTTP probe failed with statuscode: {code}"))
                }
            }
            Ok(Err(e)) => Outcome::Failure(format!("Get \"{url}\": {e}")),
            Err(_) => Outcome::Failure(format!(
                "Get \"{url}\": context deadline exceeded (Client.Timeout exceeded while awaiting headers)"
            )),
        };
    }
    Outcome::Failure(
        "the probe has no handler this node supports (exec, httpGet, tcpSocket)".into(),
    )
}

/// The probes' verdicts on one container instance.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Verdict {
    pub ready: bool,
    pub started: bool,
    pub unhealthy: bool,
}

/// Which probe.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Liveness,
    Readiness,
    Startup,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Liveness => "Liveness",
            Kind::Readiness => "Readiness",
            Kind::Startup => "Startup",
        }
    }
}

/// Counts consecutive results against the thresholds: `Some(verdict)` when it flips.
#[derive(Clone, Debug)]
pub struct Counter {
    success_threshold: u32,
    failure_threshold: u32,
    successes: u32,
    failures: u32,
    pub passing: Option<bool>,
}

impl Counter {
    pub fn new(probe: &Probe) -> Counter {
        Counter {
            success_threshold: probe.success_threshold.unwrap_or(1).max(1) as u32,
            failure_threshold: probe.failure_threshold.unwrap_or(3).max(1) as u32,
            successes: 0,
            failures: 0,
            passing: None,
        }
    }

    /// Adds a result; returns the new verdict when it changed.
    pub fn record(&mut self, ok: bool) -> Option<bool> {
        if ok {
            self.successes += 1;
            self.failures = 0;
        } else {
            self.failures += 1;
            self.successes = 0;
        }
        let verdict = if self.successes >= self.success_threshold {
            Some(true)
        } else if self.failures >= self.failure_threshold {
            Some(false)
        } else {
            None
        };
        match verdict {
            Some(v) if self.passing != Some(v) => {
                self.passing = Some(v);
                Some(v)
            }
            _ => None,
        }
    }
}

/// (pod key, container name) → (container instance, verdict).
type VerdictMap = HashMap<(String, String), (u64, Verdict)>;

/// Probe verdicts by pod key, container name and container instance (its start time).
#[derive(Clone, Default)]
pub struct Results {
    inner: Arc<Mutex<VerdictMap>>,
}

impl Results {
    fn lock(&self) -> std::sync::MutexGuard<'_, VerdictMap> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn get(&self, key: &str, name: &str, instance: u64) -> Option<Verdict> {
        self.lock()
            .get(&(key.to_string(), name.to_string()))
            .filter(|(i, _)| *i == instance)
            .map(|(_, v)| *v)
    }

    fn update(&self, key: &str, name: &str, instance: u64, f: impl FnOnce(&mut Verdict)) {
        let mut map = self.lock();
        let entry = map
            .entry((key.to_string(), name.to_string()))
            .or_insert((instance, initial_verdict_none()));
        if entry.0 != instance {
            *entry = (instance, initial_verdict_none());
        }
        f(&mut entry.1);
    }

    /// The container's failed liveness (or startup) was acted on: it is being restarted.
    pub fn handled(&self, key: &str, name: &str) {
        if let Some((_, v)) = self.lock().get_mut(&(key.to_string(), name.to_string())) {
            v.unhealthy = false;
        }
    }

    pub fn forget(&self, key: &str) {
        self.lock().retain(|(k, _), _| k != key);
    }
}

fn initial_verdict_none() -> Verdict {
    Verdict {
        ready: false,
        started: false,
        unhealthy: false,
    }
}

/// What a probe task reports to the agent.
pub trait Report: Send + Sync {
    /// The verdict changed: look at the pod again.
    fn changed(&self, key: &str);
    /// A probe failed (event `Unhealthy`).
    fn unhealthy(&self, key: &str, container: &str, message: &str);
}

/// The verdicts a container starts with: ready and started unless a probe must say so.
pub fn initial(container: &Container) -> Verdict {
    Verdict {
        ready: container.readiness_probe.is_none(),
        started: container.startup_probe.is_none(),
        unhealthy: false,
    }
}

/// The probe tasks of one container instance: started together, cancelled together.
pub struct ProbeSet {
    pub cancel: CancellationToken,
}

impl Drop for ProbeSet {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

/// Starts the probes of a container instance. The startup probe runs first; liveness and
/// readiness start once it passed.
#[allow(clippy::too_many_arguments)]
pub fn start(
    runtime: Arc<dyn PodRuntime>,
    results: Results,
    report: Arc<dyn Report>,
    key: String,
    container: Container,
    id: String,
    pod_ip: String,
    instance: u64,
) -> Option<ProbeSet> {
    if container.liveness_probe.is_none()
        && container.readiness_probe.is_none()
        && container.startup_probe.is_none()
    {
        return None;
    }
    let cancel = CancellationToken::new();
    let init = initial(&container);
    results.update(&key, &container.name, instance, |v| *v = init);
    let stop = cancel.clone();
    tokio::spawn(async move {
        let run = async {
            if let Some(p) = container.startup_probe.clone() {
                let ok = run_loop(
                    &*runtime,
                    &results,
                    &*report,
                    &key,
                    &container,
                    &id,
                    &pod_ip,
                    instance,
                    Kind::Startup,
                    &p,
                )
                .await;
                if !ok {
                    return;
                }
            }
            let live = container.liveness_probe.clone();
            let ready = container.readiness_probe.clone();
            let l = async {
                if let Some(p) = &live {
                    run_loop(
                        &*runtime,
                        &results,
                        &*report,
                        &key,
                        &container,
                        &id,
                        &pod_ip,
                        instance,
                        Kind::Liveness,
                        p,
                    )
                    .await;
                }
            };
            let r = async {
                if let Some(p) = &ready {
                    run_loop(
                        &*runtime,
                        &results,
                        &*report,
                        &key,
                        &container,
                        &id,
                        &pod_ip,
                        instance,
                        Kind::Readiness,
                        p,
                    )
                    .await;
                }
            };
            tokio::join!(l, r);
        };
        tokio::select! {
            _ = stop.cancelled() => {}
            _ = run => {}
        }
    });
    Some(ProbeSet { cancel })
}

/// Runs one probe every period. A startup probe returns true once it passed (false when it
/// failed for good); liveness ends when it failed for good; readiness runs until cancelled.
#[allow(clippy::too_many_arguments)]
async fn run_loop(
    runtime: &dyn PodRuntime,
    results: &Results,
    report: &dyn Report,
    key: &str,
    container: &Container,
    id: &str,
    pod_ip: &str,
    instance: u64,
    kind: Kind,
    probe: &Probe,
) -> bool {
    let delay = Duration::from_secs(probe.initial_delay_seconds.unwrap_or(0).max(0) as u64);
    let period = Duration::from_secs(probe.period_seconds.unwrap_or(10).max(1) as u64);
    tokio::time::sleep(delay).await;
    let mut counter = Counter::new(probe);
    loop {
        let outcome = run_once(runtime, container, id, pod_ip, probe).await;
        let ok = outcome == Outcome::Success;
        if let Outcome::Failure(message) = &outcome {
            report.unhealthy(
                key,
                &container.name,
                &format!("{} probe failed: {message}", kind.name()),
            );
        }
        if let Some(verdict) = counter.record(ok) {
            results.update(key, &container.name, instance, |v| match kind {
                Kind::Startup => {
                    v.started = verdict;
                    v.unhealthy = !verdict;
                }
                Kind::Liveness => v.unhealthy = !verdict,
                Kind::Readiness => v.ready = verdict,
            });
            report.changed(key);
            match (kind, verdict) {
                (Kind::Startup, true) => return true,
                (Kind::Startup, false) | (Kind::Liveness, false) => return false,
                _ => {}
            }
        }
        tokio::time::sleep(period).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thresholds_decide_when_a_verdict_flips() {
        let probe = Probe {
            success_threshold: Some(2),
            failure_threshold: Some(3),
            ..Probe::default()
        };
        let mut c = Counter::new(&probe);
        assert_eq!(c.record(true), None);
        assert_eq!(c.record(true), Some(true));
        assert_eq!(c.record(true), None);
        assert_eq!(c.record(false), None);
        assert_eq!(c.record(false), None);
        assert_eq!(c.record(true), None);
        assert_eq!(c.record(false), None);
        assert_eq!(c.record(false), None);
        assert_eq!(c.record(false), Some(false));
    }

    #[tokio::test]
    async fn exec_and_tcp_probes_report_what_they_saw() {
        let rt = flotilla_runtime::FakeRuntime::new();
        rt.create_sandbox("s", &flotilla_runtime::SandboxRequest::default())
            .await
            .unwrap();
        let request = flotilla_runtime::ContainerRequest {
            bundle: "/b".into(),
            sandbox: Some("s".into()),
            image: None,
            ..Default::default()
        };
        rt.create_container("c", &request).await.unwrap();
        rt.start_container("c").await.unwrap();
        rt.exec_answers("cat", 1, "cat: /tmp/ready: No such file");
        let container: Container = serde_json::from_value(serde_json::json!({
            "name": "app", "ports": [{"name": "web", "containerPort": 1}],
        }))
        .unwrap();
        let exec = |cmd: &str| Probe {
            exec: Some(k8s_openapi::api::core::v1::ExecAction {
                command: Some(vec![cmd.to_string(), "/tmp/ready".into()]),
            }),
            ..Probe::default()
        };
        assert_eq!(
            run_once(&rt, &container, "c", "127.0.0.1", &exec("test")).await,
            Outcome::Success
        );
        let Outcome::Failure(m) = run_once(&rt, &container, "c", "127.0.0.1", &exec("cat")).await
        else {
            panic!("cat fails")
        };
        assert!(
            m.contains("exited with 1") && m.contains("No such file"),
            "{m}"
        );

        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let open = listener.local_addr().unwrap().port();
        let tcp = |p: IntOrString| Probe {
            tcp_socket: Some(k8s_openapi::api::core::v1::TCPSocketAction {
                port: p,
                host: None,
            }),
            ..Probe::default()
        };
        assert_eq!(
            run_once(
                &rt,
                &container,
                "c",
                "127.0.0.1",
                &tcp(IntOrString::Int(open.into()))
            )
            .await,
            Outcome::Success
        );
        drop(listener);
        assert!(matches!(
            run_once(
                &rt,
                &container,
                "c",
                "127.0.0.1",
                &tcp(IntOrString::Int(open.into()))
            )
            .await,
            Outcome::Failure(_)
        ));
        let Outcome::Failure(m) = run_once(
            &rt,
            &container,
            "c",
            "127.0.0.1",
            &tcp(IntOrString::String("nope".into())),
        )
        .await
        else {
            panic!("no such port")
        };
        assert!(m.contains("no port named"), "{m}");
    }

    #[tokio::test]
    async fn an_http_probe_passes_on_2xx_and_3xx_and_names_other_codes() {
        let rt = flotilla_runtime::FakeRuntime::new();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        // Answers /ok with 200, /moved with 302, anything else with 404, and records paths.
        let server = tokio::spawn(async move {
            let mut seen = Vec::new();
            for _ in 0..3 {
                let (mut s, _) = listener.accept().await.unwrap();
                let mut buf = vec![0u8; 1024];
                let n = s.read(&mut buf).await.unwrap();
                let request = String::from_utf8_lossy(&buf[..n]).into_owned();
                let path = request.split_whitespace().nth(1).unwrap_or("").to_string();
                let status = match path.as_str() {
                    "/ok" => "200 OK",
                    "/moved" => "302 Found",
                    _ => "404 Not Found",
                };
                s.write_all(format!("HTTP/1.1 {status}\r\ncontent-length: 0\r\n\r\n").as_bytes())
                    .await
                    .unwrap();
                seen.push((path, request.contains("User-Agent: kube-probe/")));
            }
            seen
        });
        let container: Container =
            serde_json::from_value(serde_json::json!({"name": "web"})).unwrap();
        let get = |path: &str| Probe {
            http_get: Some(k8s_openapi::api::core::v1::HTTPGetAction {
                path: Some(path.into()),
                port: IntOrString::Int(port.into()),
                ..Default::default()
            }),
            ..Probe::default()
        };
        assert_eq!(
            run_once(&rt, &container, "c", "127.0.0.1", &get("/ok")).await,
            Outcome::Success
        );
        assert_eq!(
            run_once(&rt, &container, "c", "127.0.0.1", &get("/moved")).await,
            Outcome::Success
        );
        assert_eq!(
            run_once(&rt, &container, "c", "127.0.0.1", &get("/gone")).await,
            Outcome::Failure("HTTP probe failed with statuscode: 404".into())
        );
        let seen = server.await.unwrap();
        assert_eq!(
            seen,
            [
                ("/ok".to_string(), true),
                ("/moved".to_string(), true),
                ("/gone".to_string(), true)
            ]
        );
    }
}
