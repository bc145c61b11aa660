//! `/metrics` in the Prometheus text format: requests by verb, resource and code, request
//! latencies by verb and resource (watches, which stay open, only counted), and the gauges the
//! node adds (Raft state).

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Upper bounds of the latency buckets, in seconds (as the Kubernetes API server's).
const BUCKETS: [f64; 12] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// A gauge the node reports: name, help, labels (`key="value",…` or empty) and value.
#[derive(Clone, Debug, PartialEq)]
pub struct Gauge {
    pub name: &'static str,
    pub help: &'static str,
    pub labels: String,
    pub value: f64,
}

/// Gauges read when `/metrics` is served.
pub type Gauges = Arc<dyn Fn() -> Vec<Gauge> + Send + Sync>;

#[derive(Default)]
struct Histogram {
    /// Observations at most each bucket's bound (not cumulative; summed when written).
    counts: [u64; BUCKETS.len()],
    over: u64,
    sum: f64,
}

#[derive(Default)]
struct Counters {
    requests: BTreeMap<(String, String, u16), u64>,
    latency: BTreeMap<(String, String), Histogram>,
}

/// The API server's request metrics.
#[derive(Default)]
pub struct Metrics {
    inner: Mutex<Counters>,
}

/// The Kubernetes verb of a request: `GET`, `LIST`, `WATCH`, `POST`, `PUT`, `PATCH`, `DELETE`.
pub fn verb(method: &hyper::Method, named: bool, query: Option<&str>) -> &'static str {
    let watch = query.is_some_and(|q| q.split('&').any(|p| p == "watch=true" || p == "watch=1"));
    match *method {
        hyper::Method::GET if watch => "WATCH",
        hyper::Method::GET if !named => "LIST",
        hyper::Method::GET => "GET",
        hyper::Method::POST => "POST",
        hyper::Method::PUT => "PUT",
        hyper::Method::PATCH => "PATCH",
        hyper::Method::DELETE => "DELETE",
        _ => "OTHER",
    }
}

impl Metrics {
    /// Records one request.
    pub fn observe(&self, verb: &str, resource: &str, code: u16, took: Duration) {
        let mut c = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        *c.requests
            .entry((verb.to_string(), resource.to_string(), code))
            .or_default() += 1;
        if verb == "WATCH" {
            return;
        }
        let h = c
            .latency
            .entry((verb.to_string(), resource.to_string()))
            .or_default();
        let secs = took.as_secs_f64();
        h.sum += secs;
        match BUCKETS.iter().position(|b| secs <= *b) {
            Some(i) => h.counts[i] += 1,
            None => h.over += 1,
        }
    }

    /// The text exposition of the requests and `gauges`.
    pub fn render(&self, gauges: &[Gauge]) -> String {
        let c = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let mut out = String::new();
        out.push_str("# HELP apiserver_request_total Requests by verb, resource and HTTP code.\n");
        out.push_str("# TYPE apiserver_request_total counter\n");
        for ((verb, resource, code), n) in &c.requests {
            let _ = writeln!(
                out,
                "apiserver_request_total{{verb=\"{verb}\",resource=\"{resource}\",code=\"{code}\"}} {n}"
            );
        }
        out.push_str("# HELP apiserver_request_duration_seconds Request latency by verb and resource (not watches).\n");
        out.push_str("# TYPE apiserver_request_duration_seconds histogram\n");
        for ((verb, resource), h) in &c.latency {
            let labels = format!("verb=\"{verb}\",resource=\"{resource}\"");
            let mut cumulative = 0;
            for (bound, n) in BUCKETS.iter().zip(h.counts) {
                cumulative += n;
                let _ = writeln!(
                    out,
                    "apiserver_request_duration_seconds_bucket{{{labels},le=\"{bound}\"}} {cumulative}"
                );
            }
            let total = cumulative + h.over;
            let _ = writeln!(
                out,
                "apiserver_request_duration_seconds_bucket{{{labels},le=\"+Inf\"}} {total}"
            );
            let _ = writeln!(
                out,
                "apiserver_request_duration_seconds_sum{{{labels}}} {}",
                h.sum
            );
            let _ = writeln!(
                out,
                "apiserver_request_duration_seconds_count{{{labels}}} {total}"
            );
        }
        let mut helped = std::collections::BTreeSet::new();
        for g in gauges {
            if helped.insert(g.name) {
                let _ = writeln!(out, "# HELP {} {}\n# TYPE {} gauge", g.name, g.help, g.name);
            }
            if g.labels.is_empty() {
                let _ = writeln!(out, "{} {}", g.name, g.value);
            } else {
                let _ = writeln!(out, "{}{{{}}} {}", g.name, g.labels, g.value);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_and_latencies_in_the_text_format() {
        let m = Metrics::default();
        m.observe("LIST", "pods", 200, Duration::from_millis(3));
        m.observe("LIST", "pods", 200, Duration::from_millis(70));
        m.observe("POST", "configmaps", 409, Duration::from_millis(40));
        m.observe("WATCH", "pods", 200, Duration::from_secs(100));
        let text = m.render(&[Gauge {
            name: "flotilla_raft_term",
            help: "The current Raft term.",
            labels: String::new(),
            value: 3.0,
        }]);
        assert!(
            text.contains(
                "apiserver_request_total{verb=\"LIST\",resource=\"pods\",code=\"200\"} 2\n"
            ),
            "{text}"
        );
        assert!(text.contains(
            "apiserver_request_total{verb=\"WATCH\",resource=\"pods\",code=\"200\"} 1\n"
        ));
        assert!(text.contains("apiserver_request_duration_seconds_bucket{verb=\"LIST\",resource=\"pods\",le=\"0.005\"} 1\n"));
        assert!(text.contains("apiserver_request_duration_seconds_bucket{verb=\"LIST\",resource=\"pods\",le=\"0.1\"} 2\n"));
        assert!(text.contains(
            "apiserver_request_duration_seconds_count{verb=\"LIST\",resource=\"pods\"} 2\n"
        ));
        assert!(
            !text.contains("duration_seconds_count{verb=\"WATCH\""),
            "watches stay open: no latency"
        );
        assert!(text.contains("# TYPE flotilla_raft_term gauge\nflotilla_raft_term 3\n"));
        assert_eq!(
            verb(&hyper::Method::GET, false, Some("watch=true&rv=1")),
            "WATCH"
        );
        assert_eq!(verb(&hyper::Method::GET, false, None), "LIST");
        assert_eq!(verb(&hyper::Method::GET, true, None), "GET");
    }
}
