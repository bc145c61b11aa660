//! End-to-end tests with real `flotilla node` processes. One binary, one module per behaviour.

mod admission;
mod agent;
mod backup;
mod cas;
mod crash;
mod failover;
mod forwarding;
mod kube_client;
mod kubectl;
mod kubectl_apply;
mod lab;
mod layers;
mod leader_loops;
mod learner_read;
mod membership;
mod node_failover;
mod partition;
mod pods;
mod rewatch;
mod runtime;
mod snapshot;
mod startup_errors;
mod support;
mod up;
mod watch;
mod workloads;
