//! The Kubernetes REST API that every node serves over HTTPS (HTTP/1.1 and HTTP/2), with the
//! node's certificate from the cluster CA. Callers authenticate with a client certificate from
//! the same CA or a bearer token the cluster knows; a request with neither gets a 401 `Status`
//! (except `/version` and the health endpoints, which Kubernetes also serves to anyone).
//!
//! Discovery, OpenAPI, and every served resource: get, list, watch, create, update, patch and
//! delete, with the subresources `scale` and `status`.

mod columns;
mod deletion;
mod discovery;
mod events;
mod metrics;
mod objects;
mod openapi;
mod priority;
mod protobuf;
mod raw;
mod services;
mod spdy;
mod streams;
mod subresources;
mod update;
mod usage;
mod watch;
mod writes;

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use flotilla_api::kinds::FieldValidation;
use flotilla_pki::ca::{certs_der, subject_of};
use flotilla_pki::Credential;
use flotilla_store::{Engine, Proposer, WatchWindow};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use objects::query_param;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use discovery::{KUBE_MAJOR, KUBE_MINOR};
pub use metrics::{Gauge, Gauges, Metrics};

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("API server TLS setup: {0}")]
    Tls(String),
}

/// The caller a bearer token (`Authorization: Bearer ID.SECRET`) stands for, checked against
/// the token records in the local replica.
fn bearer_caller(header: &str, engine: &dyn Engine) -> Option<Caller> {
    let token: flotilla_pki::ApiToken = header.strip_prefix("Bearer ")?.parse().ok()?;
    let (_, record) = engine
        .get(&flotilla_pki::ApiTokenRecord::key(&token.id))
        .ok()?;
    let record = flotilla_pki::ApiTokenRecord::from_json(&record?.value)?;
    let admitted = record.admits(&token.secret);
    admitted.then_some(Caller {
        user: record.user,
        groups: record.groups,
    })
}

/// Who is calling: the subject of their client certificate, or the user of their token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Caller {
    pub user: String,
    pub groups: Vec<String>,
}

/// What the API server needs.
#[derive(Clone)]
pub struct ApiConfig {
    /// The local replica, read by gets, lists and watches.
    pub engine: Arc<dyn Engine>,
    /// The write path, and the read barrier of linearizable reads.
    pub proposer: Arc<dyn Proposer>,
    /// The replica's recent changes, for watches.
    pub window: Arc<WatchWindow>,
    /// The cluster CA, to verify client certificates.
    pub ca_pem: String,
    /// The node's certificate chain (its certificate, then the CA's) and key.
    pub identity: Credential,
    /// `host:port` clients reach this server at (for `/api`'s `serverAddressByClientCIDRs`).
    pub advertise: SocketAddr,
    /// Request counts and latencies for `/metrics`.
    pub metrics: Arc<metrics::Metrics>,
    /// The node's own gauges (Raft state) for `/metrics`.
    pub gauges: metrics::Gauges,
    /// The node-to-node tunnel, to reach the node running a pod for its logs and exec.
    pub tunnel: Option<Arc<flotilla_tunnel::Tunnel>>,
}

fn tls_err(e: impl std::fmt::Display) -> ApiError {
    ApiError::Tls(e.to_string())
}

fn server_tls(config: &ApiConfig) -> Result<rustls::ServerConfig, ApiError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for der in certs_der(&config.ca_pem).map_err(tls_err)? {
        roots.add(CertificateDer::from(der)).map_err(tls_err)?;
    }
    // Without a certificate the handshake still succeeds, so that the caller gets a 401
    // `Status` it can read (bearer tokens come later).
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .allow_unauthenticated()
    .build()
    .map_err(tls_err)?;
    let chain: Vec<CertificateDer<'static>> = certs_der(&config.identity.cert_pem)
        .map_err(tls_err)?
        .into_iter()
        .map(CertificateDer::from)
        .collect();
    let key = PrivateKeyDer::from_pem_slice(config.identity.key_pem.as_bytes()).map_err(tls_err)?;
    let mut tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(tls_err)?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .map_err(tls_err)?;
    tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(tls)
}

/// Serves the API on `listener` until `shutdown`.
pub async fn serve(
    listener: TcpListener,
    config: ApiConfig,
    shutdown: CancellationToken,
) -> Result<(), ApiError> {
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server_tls(&config)?));
    let config = Arc::new(config);
    loop {
        let (tcp, peer) = tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(err) => {
                    tracing::warn!(%err, "api accept");
                    continue;
                }
            },
        };
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        let config = Arc::clone(&config);
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            let tls = match acceptor.accept(tcp).await {
                Ok(tls) => tls,
                Err(err) => {
                    tracing::debug!(%peer, %err, "api TLS handshake failed");
                    return;
                }
            };
            let caller = tls
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|certs| subject_of(certs.first()?.as_ref()).ok())
                .map(|(user, groups)| Caller { user, groups });
            let service = hyper::service::service_fn(move |req| {
                let caller = caller.clone();
                let config = Arc::clone(&config);
                async move { Ok::<_, std::convert::Infallible>(measured(req, caller, &config).await) }
            });
            let builder =
                hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new());
            let conn =
                builder.serve_connection_with_upgrades(hyper_util::rt::TokioIo::new(tls), service);
            tokio::select! {
                _ = shutdown.cancelled() => {}
                result = conn => if let Err(err) = result {
                    tracing::debug!(%peer, %err, "api connection ended");
                },
            }
        });
    }
}

type Body = http_body_util::combinators::BoxBody<Bytes, std::convert::Infallible>;

fn json_response(status: StatusCode, body: &Value) -> Response<Body> {
    Response::builder()
        .status(status)
        .header("Content-Type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())).boxed())
        .expect("a valid response")
}

/// Starts a watch and answers with its event stream.
async fn watch_response(
    config: &ApiConfig,
    target: &objects::Target<'_>,
    query: &objects::ReadQuery,
) -> Response<Body> {
    let bad = |m: String| failure(StatusCode::BAD_REQUEST, "BadRequest", &m);
    let (labels, fields) = match query.selectors() {
        Ok(s) => s,
        Err(e) => return bad(e.message),
    };
    let after = match query.resource_version.as_deref() {
        None | Some("") | Some("0") => None,
        Some(rv) => match rv.parse() {
            Ok(rv) => Some(rv),
            Err(_) => return bad(format!("invalid resourceVersion {rv:?}")),
        },
    };
    if after.is_none() && !query.any_version {
        if let Err(e) = config.proposer.read_barrier().await {
            let code = StatusCode::from_u16(e.code().http_status())
                .unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
            return failure(code, e.code().k8s_reason(), &e.to_string());
        }
    }
    let request = watch::WatchRequest {
        labels,
        fields,
        after,
        timeout: query.timeout_seconds.map(std::time::Duration::from_secs),
        table: query.table,
    };
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(64);
    tokio::spawn(watch::run(
        Arc::clone(&config.engine),
        Arc::clone(&config.window),
        target.resource,
        target.namespace.map(str::to_string),
        request,
        tx,
    ));
    let frames = futures_util_stream(rx);
    Response::builder()
        .status(StatusCode::OK)
        .header("Content-Type", "application/json")
        .header("Transfer-Encoding", "chunked")
        .body(http_body_util::StreamBody::new(frames).boxed())
        .expect("a valid response")
}

/// The channel's lines as body frames.
fn futures_util_stream(
    rx: tokio::sync::mpsc::Receiver<Bytes>,
) -> impl futures_core::Stream<Item = Result<hyper::body::Frame<Bytes>, std::convert::Infallible>>
       + Send
       + Sync
       + 'static {
    use tokio_stream::StreamExt;
    tokio_stream::wrappers::ReceiverStream::new(rx).map(|b| Ok(hyper::body::Frame::data(b)))
}

/// `kubectl auth whoami` and `auth can-i`. Until RBAC (a later issue) every authenticated
/// caller is an admin, so every access review is allowed. The request body is not read: kubectl
/// 1.32 sends it as protobuf, and nothing in it changes the answer yet.
fn review(segments: &[&str], caller: &Caller) -> Option<Value> {
    let user = json!({"username": caller.user, "groups": caller.groups});
    match segments {
        ["apis", "authentication.k8s.io", "v1", "selfsubjectreviews"] => Some(json!({
            "kind": "SelfSubjectReview",
            "apiVersion": "authentication.k8s.io/v1",
            "metadata": {"creationTimestamp": null},
            "status": {"userInfo": user},
        })),
        ["apis", "authorization.k8s.io", "v1", "selfsubjectaccessreviews"] => Some(json!({
            "kind": "SelfSubjectAccessReview",
            "apiVersion": "authorization.k8s.io/v1",
            "metadata": {"creationTimestamp": null},
            "spec": {},
            "status": {"allowed": true, "reason": "every authenticated user is an admin until RBAC is implemented"},
        })),
        ["apis", "authorization.k8s.io", "v1", "selfsubjectrulesreviews"] => Some(json!({
            "kind": "SelfSubjectRulesReview",
            "apiVersion": "authorization.k8s.io/v1",
            "metadata": {"creationTimestamp": null},
            "spec": {},
            "status": {
                "resourceRules": [{"verbs": ["*"], "apiGroups": ["*"], "resources": ["*"]}],
                "nonResourceRules": [{"verbs": ["*"], "nonResourceURLs": ["*"]}],
                "incomplete": false,
            },
        })),
        _ => None,
    }
}

/// POST, PUT, PATCH and DELETE on objects.
async fn write(
    method: &Method,
    segments: &[&str],
    route: &Route<'_>,
    query: Option<&str>,
    body: &[u8],
    content_type: &str,
    config: &ApiConfig,
) -> Response<Body> {
    let Route::Object(target) = route else {
        return failure(
            StatusCode::METHOD_NOT_ALLOWED,
            "MethodNotAllowed",
            &format!("{method} is not supported on /{}", segments.join("/")),
        );
    };
    let (engine, proposer) = (&*config.engine, &*config.proposer);
    let name = target.name.unwrap_or("");
    let validation = match query_param(query, "fieldValidation") {
        None => FieldValidation::default(),
        Some(v) => match FieldValidation::parse(&v) {
            Some(f) => f,
            None => {
                return failure(
                    StatusCode::BAD_REQUEST,
                    "BadRequest",
                    &format!("fieldValidation must be one of Ignore, Warn or Strict, not {v:?}"),
                )
            }
        },
    };
    let request = writes::WriteRequest {
        body,
        content_type,
        validation,
    };
    let result = match (method, target.name) {
        (&Method::POST, None) => writes::create(engine, proposer, target, &request)
            .await
            .map(|w| (StatusCode::CREATED, w)),
        (&Method::PUT, Some(n)) => writes::update(engine, proposer, target, n, &request)
            .await
            .map(|w| (StatusCode::OK, w)),
        (&Method::PATCH, Some(n)) => writes::patch(engine, proposer, target, n, &request)
            .await
            .map(|w| (StatusCode::OK, w)),
        (&Method::DELETE, Some(n)) => {
            let options = match deletion::parse_options(query, body, content_type) {
                Ok(o) => o,
                Err(e) => return write_failure(&e, target.resource, name),
            };
            deletion::delete(engine, proposer, target, n, &options)
                .await
                .map(|object| {
                    (
                        StatusCode::OK,
                        writes::Written {
                            object,
                            warnings: Vec::new(),
                        },
                    )
                })
        }
        _ => {
            return failure(
                StatusCode::METHOD_NOT_ALLOWED,
                "MethodNotAllowed",
                &format!("{method} is not supported on /{}", segments.join("/")),
            )
        }
    };
    match result {
        Ok((code, written)) => {
            let mut response = json_response(code, &written.object);
            for w in &written.warnings {
                // RFC 7234 warn-code 299, as the Kubernetes API server sends them.
                if let Ok(v) = hyper::header::HeaderValue::from_str(&format!("299 - {w:?}")) {
                    response.headers_mut().append("Warning", v);
                }
            }
            response
        }
        Err(e) => write_failure(&e, target.resource, name),
    }
}

/// The `Status` of a failed write, with the object's name, kind and field causes.
fn write_failure(e: &writes::WriteError, r: &flotilla_api::Resource, name: &str) -> Response<Body> {
    let code = StatusCode::from_u16(e.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut status = status_failure(code, e.reason, &e.message);
    status["details"] = e.details(r, name);
    json_response(code, &status)
}

/// A `Status` failure as the Kubernetes API returns it.
pub fn status_failure(code: StatusCode, reason: &str, message: &str) -> Value {
    json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code.as_u16(),
    })
}

fn failure(code: StatusCode, reason: &str, message: &str) -> Response<Body> {
    json_response(code, &status_failure(code, reason, message))
}

/// Serves a request and records it in the metrics.
async fn measured(
    req: Request<Incoming>,
    caller: Option<Caller>,
    config: &ApiConfig,
) -> Response<Body> {
    let started = std::time::Instant::now();
    let path = req.uri().path().to_string();
    // The path is parsed once, here; the metrics and the handler share the route.
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let route = Route::of(&segments);
    let (resource, named) = match &route {
        Route::Subresource(target, sub) => (format!("{}/{sub}", target.resource.plural), true),
        Route::Object(target) => (target.resource.plural.to_string(), target.name.is_some()),
        Route::Other => (String::new(), true),
    };
    let verb = metrics::verb(req.method(), named, req.uri().query());
    let response = handle(req, caller, config, &path, &segments, &route).await;
    config.metrics.observe(
        verb,
        &resource,
        response.status().as_u16(),
        started.elapsed(),
    );
    response
}

/// Where a request's path points.
enum Route<'a> {
    /// An object's subresource (`status`, `scale`, `eviction`).
    Subresource(objects::Target<'a>, &'a str),
    /// An object or a collection of objects.
    Object(objects::Target<'a>),
    /// Discovery, OpenAPI, health, reviews, or nothing served.
    Other,
}

impl<'a> Route<'a> {
    fn of(segments: &[&'a str]) -> Route<'a> {
        if let Some((target, sub)) = subresources::parse(segments) {
            return Route::Subresource(target, sub);
        }
        match objects::parse_path(segments) {
            Some(target) => Route::Object(target),
            None => Route::Other,
        }
    }
}

async fn handle(
    req: Request<Incoming>,
    caller: Option<Caller>,
    config: &ApiConfig,
    path: &str,
    segments: &[&str],
    route: &Route<'_>,
) -> Response<Body> {
    let method = req.method().clone();
    // A client certificate from the cluster CA, else a bearer token the cluster knows.
    let caller = caller.or_else(|| {
        let header = req.headers().get(hyper::header::AUTHORIZATION)?;
        bearer_caller(header.to_str().ok()?, &*config.engine)
    });
    // Streams (logs, exec) read no body and may take the connection over.
    if let Route::Subresource(target, sub) = route {
        if target.resource.plural == "pods" && streams::serves(sub) {
            if caller.is_none() {
                return failure(StatusCode::UNAUTHORIZED, "Unauthorized", "Unauthorized");
            }
            return streams::handle(req, config, target, sub).await;
        }
    }
    let query = req.uri().query().map(str::to_string);
    let accept = req
        .headers()
        .get(hyper::header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let content_type = req
        .headers()
        .get(hyper::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/json")
        .to_string();
    let body = match req.into_body().collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => {
            return failure(
                StatusCode::BAD_REQUEST,
                "BadRequest",
                &format!("cannot read the request body: {e}"),
            )
        }
    };
    // Health and version need no credentials, as in Kubernetes (`system:public-info-viewer`).
    match path {
        "/healthz" | "/livez" | "/readyz" => {
            return Response::new(Full::new(Bytes::from_static(b"ok")).boxed());
        }
        "/version" if method == Method::GET => {
            return json_response(StatusCode::OK, &discovery::version());
        }
        _ => {}
    }
    if caller.is_none() {
        return failure(StatusCode::UNAUTHORIZED, "Unauthorized", "Unauthorized");
    }
    if path == "/metrics" && method == Method::GET {
        let text = config.metrics.render(&(config.gauges)());
        return Response::builder()
            .status(StatusCode::OK)
            .header("Content-Type", "text/plain; version=0.0.4")
            .body(Full::new(Bytes::from(text)).boxed())
            .expect("a valid response");
    }
    if let Route::Subresource(target, sub) = route {
        let (target, sub) = (target, *sub);
        let name = target.name.unwrap_or("");
        return match subresources::handle(
            &*config.engine,
            &*config.proposer,
            &method,
            target,
            sub,
            &body,
            &content_type,
        )
        .await
        {
            Ok(v) if sub == "eviction" || sub == "binding" => {
                json_response(StatusCode::CREATED, &v)
            }
            Ok(v) => json_response(StatusCode::OK, &v),
            Err(e) => write_failure(&e, target.resource, name),
        };
    }
    if method != Method::GET {
        if method == Method::POST {
            if let Some(review) = review(segments, caller.as_ref().expect("checked above")) {
                return json_response(StatusCode::CREATED, &review);
            }
        }
        return write(
            &method,
            segments,
            route,
            query.as_deref(),
            &body,
            &content_type,
            config,
        )
        .await;
    }
    if let ["apis", usage::GROUP, usage::VERSION, rest @ ..] = segments {
        if !rest.is_empty() {
            return usage::handle(config, rest, query.as_deref()).await;
        }
    }
    if let Route::Object(target) = route {
        let query = objects::ReadQuery::parse(query.as_deref(), &accept);
        if query.watch && target.name.is_none() {
            return watch_response(config, target, &query).await;
        }
        if let Err(e) = objects::before_read(&*config.proposer, &query).await {
            return failure(
                StatusCode::from_u16(e.code).unwrap_or(StatusCode::SERVICE_UNAVAILABLE),
                e.reason,
                &e.message,
            );
        }
        // The scan and the serialisation run on the blocking pool, not on an async worker.
        let engine = Arc::clone(&config.engine);
        let (resource, namespace, name) = (
            target.resource,
            target.namespace.map(str::to_string),
            target.name.map(str::to_string),
        );
        let read = tokio::task::spawn_blocking(move || {
            let target = objects::Target {
                resource,
                namespace: namespace.as_deref(),
                name: name.as_deref(),
            };
            objects::read_local(&*engine, &target, &query)
        })
        .await;
        let read = match read {
            Ok(r) => r,
            Err(e) => {
                return failure(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "InternalError",
                    &format!("the read task failed: {e}"),
                )
            }
        };
        return match read {
            Ok(objects::ReadBody::Json(body)) => json_response(StatusCode::OK, &body),
            Ok(objects::ReadBody::Raw(text)) => Response::builder()
                .status(StatusCode::OK)
                .header("Content-Type", "application/json")
                .body(Full::new(Bytes::from(text)).boxed())
                .expect("a valid response"),
            Err(e) => failure(
                StatusCode::from_u16(e.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
                e.reason,
                &e.message,
            ),
        };
    }
    if let ["openapi", "v3", gv @ ..] = segments {
        if let Some(doc) = openapi::document_bytes(&gv.join("/")) {
            return Response::builder()
                .status(StatusCode::OK)
                .header("Content-Type", "application/json")
                .body(Full::new(doc).boxed())
                .expect("a valid response");
        }
    }
    let advertise = config.advertise.to_string();
    let body = match segments {
        ["version"] => Some(discovery::version()),
        ["api"] => Some(discovery::core_versions(&advertise)),
        ["api", version] => discovery::resource_list("", version),
        ["apis"] => Some(discovery::group_list()),
        ["apis", group] => discovery::group(group),
        ["apis", group, version] => discovery::resource_list(group, version),
        ["openapi", "v3"] => Some(openapi::index()),
        _ => None,
    };
    match body {
        Some(b) => json_response(StatusCode::OK, &b),
        None => failure(
            StatusCode::NOT_FOUND,
            "NotFound",
            &format!("the server could not find the requested resource ({path})"),
        ),
    }
}
