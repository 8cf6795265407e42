//! The HTTP status server (`--status-addr`): the pool's status as JSON,
//! its metrics for Prometheus, its live dashboard (`/`, fed by the event
//! stream `/events`), and a few operations guarded by a bearer token.
//! `docs/api.md` documents every endpoint.
//!
//! It reads nothing of the pool itself: each request becomes an
//! [`api::Request`] answered by the loop, so an answer is a consistent
//! snapshot and no lock is shared. Everything else (HTTP, routing, JSON and
//! Prometheus text, the dashboard's event streams) runs on a thread of its
//! own, with a runtime of its own: a client that never pauses costs the
//! loop only the snapshots it asks for, never the serving, so alerts do not
//! wait behind it. That thread keeps xypriss's priority: with normal
//! scheduling, fifty followers beside a busy browser on two CPUs starved
//! it, and followers that read lost lines (`tests/dashboard.rs`). The loop
//! and the stdout writer run one above it, so it never holds them up.
//!
//! It lives inside the supervisor, so a client must not be able to hurt the
//! pool through it: bodies are small and bounded, a client gets a bounded
//! time to send its headers and its body, the connections open at once are
//! capped, in all and per peer, and each is bounded in time (see
//! [`super::limits`]), so slow, idle or greedy clients can neither pin the
//! server nor use up the descriptors the supervisor needs for its workers.
//! Every refusal is a 4xx or 5xx with a JSON body that says why; nothing a
//! client sends can stop the server.
//!
//! Over 600 lines with its unit tests; the server itself is the first 609.

use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
    path::Path,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::Duration,
};

use axum::{
    Extension, Json, Router,
    body::Bytes,
    extract::{
        DefaultBodyLimit, FromRequest, FromRequestParts, Path as UrlPath, State,
        rejection::PathRejection,
    },
    http::{HeaderValue, Method, StatusCode, Uri, header, request::Parts},
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use hyper::server::conn::http1;
use hyper_util::{
    rt::{TokioIo, TokioTimer},
    service::TowerToHyperService,
};
use nix::sys::socket::{setsockopt, sockopt::SndBuf};
use serde::{Deserialize, de::DeserializeOwned};
use serde_json::Value;
use tokio::{
    net::{TcpListener, TcpStream},
    sync::oneshot,
    task::{self, JoinSet},
    time::{sleep, timeout},
};
use tokio_io_timeout::TimeoutStream;

use super::{
    ApiError, Handle, Reply, Request, Status, dashboard,
    limits::{CONNECTION_DEADLINE, GRACE, Hosts, PER_PEER, Peers, SEND_BUFFER, WRITE_STALL},
    sse,
    token::{Token, TokenError, TokenFile},
    views::{HealthView, MemoryView, TotalsView, WorkersView},
};
use crate::output::metrics;

/// The largest request body taken; the bodies this API takes are a few
/// dozen bytes.
const BODY_LIMIT: usize = 4096;

/// How long a client has to send a request's headers, from when the server
/// starts waiting for them (idle keep-alive connections included).
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a client has to send a request's body.
const BODY_TIMEOUT: Duration = Duration::from_secs(10);

/// Connections served at once; more wait in the kernel's accept queue.
const MAX_CONNECTIONS: usize = 64;

/// Who may read: everyone who reaches the address, or only token holders.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reads {
    Open,
    /// `--status-read-token`: every GET but the dashboard's own files.
    TakeToken,
}

/// How long to wait after a failed accept (out of descriptors) before the
/// next.
const ACCEPT_PAUSE: Duration = Duration::from_millis(100);

/// Why the status server could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot listen on --status-addr {address}: {source}")]
    Bind {
        address: SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    Token(#[from] TokenError),
    #[error("cannot start the status server's thread: {0}")]
    Thread(std::io::Error),
}

/// The running server; it stops, and its token file goes, when dropped.
#[derive(Debug)]
pub struct StatusServer {
    address: SocketAddr,
    /// Dropped to stop the server's thread.
    stop: Option<oneshot::Sender<()>>,
    thread: Option<thread::JoinHandle<()>>,
    token_file: TokenFile,
}

impl StatusServer {
    /// Binds `address`, writes a fresh token to `token_path`, and serves on
    /// a thread of its own.
    pub fn start(
        address: SocketAddr,
        token_path: &Path,
        reads: Reads,
        handle: Handle,
    ) -> Result<Self, StartError> {
        let bind_error = |source| StartError::Bind { address, source };
        let listener = std::net::TcpListener::bind(address).map_err(bind_error)?;
        listener.set_nonblocking(true).map_err(bind_error)?;
        let bound = listener.local_addr().map_err(bind_error)?;
        let token = Token::generate()?;
        let token_file = token.write(token_path)?;
        let server = Server {
            handle,
            token: Arc::new(token),
            reads,
            hosts: Hosts::for_address(bound),
        };
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(StartError::Thread)?;
        let (stop, stopped) = oneshot::channel();
        let thread = thread::Builder::new()
            .name("xypriss-http".into())
            .spawn(move || {
                runtime.block_on(async move {
                    match TcpListener::from_std(listener) {
                        Ok(listener) => {
                            tokio::select! {
                                () = serve(listener, server) => {}
                                _ = stopped => {}
                            }
                        }
                        Err(err) => tracing::error!("status server: cannot listen: {err}"),
                    }
                });
                // The runtime goes with the thread, and every connection with it.
            })
            .map_err(StartError::Thread)?;
        Ok(Self {
            address: bound,
            stop: Some(stop),
            thread: Some(thread),
            token_file,
        })
    }

    /// Where it listens (a port 0 is the port the kernel chose).
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    pub fn token_file(&self) -> &Path {
        self.token_file.path()
    }
}

impl Drop for StatusServer {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(thread) = self.thread.take()
            && thread.join().is_err()
        {
            tracing::error!("the status server's thread panicked");
        }
    }
}

/// Serves the API on `listener` until dropped.
async fn serve(listener: TcpListener, server: Server) {
    let router = router(server);
    let mut connections = JoinSet::new();
    // Whose each connection is, to give the peer its slot back.
    let mut owners: HashMap<task::Id, IpAddr> = HashMap::new();
    let mut peers = Peers::default();
    loop {
        tokio::select! {
            Some(ended) = connections.join_next_with_id() => {
                let id = match ended {
                    Ok((id, ())) => id,
                    Err(err) => err.id(),
                };
                if let Some(ip) = owners.remove(&id) {
                    peers.release(ip);
                }
            }
            accepted = listener.accept(), if connections.len() < MAX_CONNECTIONS => match accepted {
                Ok((stream, peer)) if peers.admit(peer.ip()) => {
                    let id = connections.spawn(connection(stream, router.clone())).id();
                    owners.insert(id, peer.ip());
                }
                Ok((stream, peer)) => refuse(&stream, peer),
                Err(err) => {
                    tracing::warn!("status server: cannot accept a connection: {err}");
                    tokio::time::sleep(ACCEPT_PAUSE).await;
                }
            },
        }
    }
}

/// Tells a peer over its share why it is not served, if its socket takes it
/// at once (a new socket's buffer is empty), and closes the connection.
fn refuse(stream: &TcpStream, peer: SocketAddr) {
    tracing::debug!("status server: {peer} holds {PER_PEER} connections already");
    let body = serde_json::json!({"error": {
        "code": "too_many_connections",
        "message": format!("this address holds {PER_PEER} connections already"),
    }})
    .to_string();
    let answer = format!(
        "HTTP/1.1 429 Too Many Requests\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.try_write(answer.as_bytes());
}

/// Set once a connection carries an event stream, which is meant to last.
#[derive(Clone, Default)]
struct Streaming(Arc<AtomicBool>);

/// One client's connection, HTTP/1.1 with keep-alive, within the limits of
/// [`super::limits`].
async fn connection(stream: TcpStream, router: Router) {
    if let Err(err) = setsockopt(&stream, SndBuf, &SEND_BUFFER) {
        tracing::debug!("status server: cannot set SO_SNDBUF: {err}");
    }
    let mut stream = TimeoutStream::new(stream);
    stream.set_write_timeout(Some(WRITE_STALL));
    let streaming = Streaming::default();
    let service = router.layer(Extension(streaming.clone()));
    let conn = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .serve_connection(
            TokioIo::new(Box::pin(stream)),
            TowerToHyperService::new(service),
        );
    tokio::pin!(conn);
    let served = tokio::select! {
        served = conn.as_mut() => served,
        () = sleep(CONNECTION_DEADLINE) => {
            if streaming.0.load(Ordering::Relaxed) {
                conn.await
            } else {
                conn.as_mut().graceful_shutdown();
                match timeout(GRACE, conn).await {
                    Ok(served) => served,
                    Err(_) => return,
                }
            }
        }
    };
    if let Err(err) = served {
        tracing::debug!("status server: connection ended: {err}");
    }
}

#[derive(Clone)]
struct Server {
    handle: Handle,
    token: Arc<Token>,
    reads: Reads,
    hosts: Hosts,
}

fn router(server: Server) -> Router {
    Router::new()
        .route("/", get(dashboard::page))
        .route("/dashboard.js", get(dashboard::script))
        .route("/dashboard.css", get(dashboard::style))
        .route("/events", get(events))
        .route("/cluster/memory", get(memory))
        .route("/cluster/health", get(health))
        .route("/cluster/metrics", get(totals))
        .route("/workers", get(workers))
        .route("/metrics", get(prometheus))
        .route("/cluster/scale", post(scale))
        .route("/cluster/low-memory", post(low_memory))
        .route("/workers/{id}/restart", post(restart))
        .route("/cluster/reload", post(reload))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .layer(middleware::from_fn_with_state(server.clone(), guard))
        .with_state(server)
}

/// Before any endpoint: the `Host` allow-list, and the token for reads when
/// they take it (the `POST`s check it themselves, before their body).
async fn guard(
    State(server): State<Server>,
    request: axum::extract::Request,
    next: Next,
) -> Response {
    let host = request
        .headers()
        .get(header::HOST)
        .map(|h| h.to_str().unwrap_or(""));
    if !server.hosts.allow(host) {
        return Refusal::HostNotAllowed {
            host: host.unwrap_or("").to_owned(),
        }
        .into_response();
    }
    let path = request.uri().path();
    if server.reads == Reads::TakeToken
        && request.method() != Method::POST
        && !dashboard::PATHS.contains(&path)
        && let Err(refusal) = authorize(request.headers(), &server.token)
    {
        return refusal.into_response();
    }
    next.run(request).await
}

/// `GET /events`: the event stream.
async fn events(
    State(server): State<Server>,
    Extension(streaming): Extension<Streaming>,
) -> Response {
    streaming.0.store(true, Ordering::Relaxed);
    sse::stream(server.handle).into_response()
}

/// Answers with what `cut` makes of the pool's status now.
async fn view(server: &Server, cut: fn(&Status) -> Response) -> Result<Response, Refusal> {
    Ok(cut(&*server.handle.status().await?))
}

async fn memory(State(server): State<Server>) -> Result<Response, Refusal> {
    view(&server, |s| Json(MemoryView::new(s)).into_response()).await
}

async fn health(State(server): State<Server>) -> Result<Response, Refusal> {
    view(&server, |s| Json(HealthView::new(s)).into_response()).await
}

async fn totals(State(server): State<Server>) -> Result<Response, Refusal> {
    view(&server, |s| Json(TotalsView::new(s)).into_response()).await
}

async fn workers(State(server): State<Server>) -> Result<Response, Refusal> {
    view(&server, |s| Json(WorkersView::new(s)).into_response()).await
}

async fn prometheus(State(server): State<Server>) -> Result<Response, Refusal> {
    view(&server, |s| {
        let content_type = [(header::CONTENT_TYPE, metrics::CONTENT_TYPE)];
        (content_type, metrics::render(s)).into_response()
    })
    .await
}

/// `POST /cluster/scale`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ScaleBody {
    workers: u32,
}

/// `POST /cluster/low-memory`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LowMemoryBody {
    enabled: bool,
}

/// Hands `request` to the control loop.
async fn ask(server: &Server, request: Request) -> Result<Json<Reply>, Refusal> {
    Ok(Json(server.handle.call(request).await?))
}

async fn scale(
    _: Authorized,
    State(server): State<Server>,
    JsonBody(body): JsonBody<ScaleBody>,
) -> Result<Json<Reply>, Refusal> {
    let workers = body.workers;
    ask(&server, Request::Scale { workers }).await
}

async fn low_memory(
    _: Authorized,
    State(server): State<Server>,
    JsonBody(body): JsonBody<LowMemoryBody>,
) -> Result<Json<Reply>, Refusal> {
    let enabled = body.enabled;
    ask(&server, Request::LowMemory { enabled }).await
}

/// Replacements take their time: the answer says they are under way.
async fn restart(
    _: Authorized,
    State(server): State<Server>,
    id: Result<UrlPath<u32>, PathRejection>,
) -> Result<(StatusCode, Json<Reply>), Refusal> {
    let UrlPath(id) = id.map_err(|rejection| Refusal::BadWorkerId {
        reason: rejection.body_text(),
    })?;
    let reply = ask(&server, Request::Restart { worker: Some(id) }).await?;
    Ok((StatusCode::ACCEPTED, reply))
}

async fn reload(
    _: Authorized,
    State(server): State<Server>,
) -> Result<(StatusCode, Json<Reply>), Refusal> {
    Ok((StatusCode::ACCEPTED, ask(&server, Request::Reload).await?))
}

async fn not_found(uri: Uri) -> Refusal {
    Refusal::NotFound {
        path: uri.path().to_owned(),
    }
}

async fn method_not_allowed(method: Method, uri: Uri) -> Refusal {
    Refusal::MethodNotAllowed {
        method,
        path: uri.path().to_owned(),
    }
}

/// Proof that the request carries this pool's token.
struct Authorized;

impl FromRequestParts<Server> for Authorized {
    type Rejection = Refusal;

    async fn from_request_parts(parts: &mut Parts, server: &Server) -> Result<Self, Refusal> {
        authorize(&parts.headers, &server.token).map(|()| Self)
    }
}

/// Whether `headers` carry `token`.
fn authorize(headers: &axum::http::HeaderMap, token: &Token) -> Result<(), Refusal> {
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(bearer)
        .ok_or(Refusal::MissingToken)?;
    if token.matches(presented) {
        Ok(())
    } else {
        Err(Refusal::WrongToken)
    }
}

/// The token of an `Authorization: Bearer <token>` header (the scheme's
/// case does not matter).
fn bearer(value: &HeaderValue) -> Option<&str> {
    let (scheme, token) = value.to_str().ok()?.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then_some(token.trim())
}

/// A JSON body, read within [`BODY_TIMEOUT`] and [`BODY_LIMIT`]; whatever
/// its `Content-Type`, since `curl -d` sends a form's.
struct JsonBody<T>(T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for JsonBody<T> {
    type Rejection = Refusal;

    async fn from_request(request: axum::extract::Request, state: &S) -> Result<Self, Refusal> {
        let bytes = tokio::time::timeout(BODY_TIMEOUT, Bytes::from_request(request, state))
            .await
            .map_err(|_| Refusal::BodyTimeout {
                timeout: BODY_TIMEOUT,
            })?
            .map_err(|rejection| {
                if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                    Refusal::BodyTooLarge { limit: BODY_LIMIT }
                } else {
                    Refusal::BadBody {
                        reason: rejection.body_text(),
                    }
                }
            })?;
        let bad = |err: serde_json::Error| Refusal::BadBody {
            reason: err.to_string(),
        };
        // serde would also take a struct as an array of its fields.
        match serde_json::from_slice(&bytes).map_err(bad)? {
            object @ Value::Object(_) => T::deserialize(object).map(Self).map_err(bad),
            _ => Err(Refusal::BadBody {
                reason: "expected a JSON object".into(),
            }),
        }
    }
}

/// Why a request got no answer.
#[derive(Debug, thiserror::Error)]
enum Refusal {
    #[error(transparent)]
    Pool(#[from] ApiError),
    #[error("the body is not valid: {reason}")]
    BadBody { reason: String },
    #[error("the body is over {limit} bytes")]
    BodyTooLarge { limit: usize },
    #[error("the body did not arrive within {} s", timeout.as_secs())]
    BodyTimeout { timeout: Duration },
    #[error(
        "this endpoint takes `Authorization: Bearer TOKEN`, with the token from the file the status_server event names"
    )]
    MissingToken,
    #[error(
        "Host {host:?} is not this server's: bound to loopback, it answers localhost and loopback addresses only"
    )]
    HostNotAllowed { host: String },
    #[error("the bearer token is not this pool's")]
    WrongToken,
    #[error("the worker id is not valid: {reason}")]
    BadWorkerId { reason: String },
    #[error("no endpoint {path}")]
    NotFound { path: String },
    #[error("{method} is not allowed on {path}")]
    MethodNotAllowed { method: Method, path: String },
}

impl Refusal {
    fn status(&self) -> StatusCode {
        match self {
            Self::Pool(err) => {
                StatusCode::from_u16(err.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
            }
            Self::BadBody { .. } | Self::BadWorkerId { .. } => StatusCode::BAD_REQUEST,
            Self::BodyTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Self::BodyTimeout { .. } => StatusCode::REQUEST_TIMEOUT,
            Self::MissingToken | Self::WrongToken => StatusCode::UNAUTHORIZED,
            Self::HostNotAllowed { .. } => StatusCode::MISDIRECTED_REQUEST,
            Self::NotFound { .. } => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
        }
    }

    /// A short, stable name for machines.
    fn code(&self) -> &'static str {
        match self {
            Self::Pool(err) => err.code(),
            Self::BadBody { .. } => "bad_body",
            Self::BodyTooLarge { .. } => "body_too_large",
            Self::BodyTimeout { .. } => "body_timeout",
            Self::MissingToken => "missing_token",
            Self::WrongToken => "invalid_token",
            Self::HostNotAllowed { .. } => "host_not_allowed",
            Self::BadWorkerId { .. } => "bad_worker_id",
            Self::NotFound { .. } => "not_found",
            Self::MethodNotAllowed { .. } => "method_not_allowed",
        }
    }

    /// RFC 6750's challenge, for the 401s.
    fn challenge(&self) -> Option<&'static str> {
        match self {
            Self::MissingToken => Some(r#"Bearer realm="xypriss""#),
            Self::WrongToken => Some(r#"Bearer realm="xypriss", error="invalid_token""#),
            _ => None,
        }
    }
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        let body = serde_json::json!({
            "error": { "code": self.code(), "message": self.to_string() }
        });
        let mut response = (self.status(), Json(body)).into_response();
        if let Some(challenge) = self.challenge() {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static(challenge),
            );
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    use super::*;
    use crate::api::{self, Calls};

    /// A server on a loopback port, its token, and the loop's end.
    async fn server() -> (SocketAddr, String, Calls) {
        server_with(Reads::Open).await
    }

    async fn server_with(reads: Reads) -> (SocketAddr, String, Calls) {
        let (handle, calls) = api::channel();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let token = Token::generate().unwrap();
        let secret = token.secret().to_owned();
        let server = Server {
            handle,
            token: Arc::new(token),
            reads,
            hosts: Hosts::for_address(address),
        };
        tokio::spawn(serve(listener, server));
        (address, secret, calls)
    }

    /// One HTTP/1.0 exchange: the status, the headers and the body.
    async fn exchange(address: SocketAddr, request: &str) -> (u16, String, Value) {
        let mut stream = TcpStream::connect(address).await.unwrap();
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).await.unwrap();
        let (head, body) = response.split_once("\r\n\r\n").unwrap();
        let status = head[9..12].parse().unwrap();
        let body = serde_json::from_str(body).unwrap_or(Value::Null);
        (status, head.to_owned(), body)
    }

    fn post(path: &str, token: &str, body: &str) -> String {
        format!(
            "POST {path} HTTP/1.0\r\nAuthorization: Bearer {token}\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
    }

    #[tokio::test]
    async fn a_stopping_pool_answers_503() {
        let (address, token, calls) = server().await;
        drop(calls);
        let (status, _, body) = exchange(address, "GET /workers HTTP/1.0\r\n\r\n").await;
        assert_eq!(status, 503);
        assert_eq!(body["error"]["code"], "stopping");
        let (status, _, _) = exchange(address, &post("/cluster/reload", &token, "")).await;
        assert_eq!(status, 503);
    }

    #[tokio::test]
    async fn the_token_is_checked_before_the_body() {
        let (address, token, _calls) = server().await;
        let (status, head, body) = exchange(address, &post("/cluster/scale", "nope", "{")).await;
        assert_eq!(status, 401);
        assert_eq!(body["error"]["code"], "invalid_token");
        assert!(
            head.to_lowercase()
                .contains("www-authenticate: bearer realm=\"xypriss\", error=\"invalid_token\""),
            "{head}"
        );
        let (status, _, body) = exchange(address, &post("/cluster/scale", &token, "{")).await;
        assert_eq!(status, 400);
        assert_eq!(body["error"]["code"], "bad_body");
    }

    #[tokio::test]
    async fn the_scheme_is_case_insensitive_and_others_are_no_token() {
        let value = |s: &'static str| HeaderValue::from_static(s);
        assert_eq!(bearer(&value("Bearer abc")), Some("abc"));
        assert_eq!(bearer(&value("bearer  abc ")), Some("abc"));
        assert_eq!(bearer(&value("Basic abc")), None);
        assert_eq!(bearer(&value("Bearer")), None);
        let (address, _, _calls) = server().await;
        let request = "POST /cluster/reload HTTP/1.0\r\nAuthorization: Basic Zm9vOmJhcg==\r\n\r\n";
        let (status, head, body) = exchange(address, request).await;
        assert_eq!(status, 401);
        assert_eq!(body["error"]["code"], "missing_token");
        assert!(head.to_lowercase().contains("www-authenticate: bearer"));
    }

    #[tokio::test]
    async fn a_large_body_is_refused_with_413() {
        let (address, token, _calls) = server().await;
        let body = format!(
            "{{\"workers\": 1, \"pad\": \"{}\"}}",
            "x".repeat(BODY_LIMIT)
        );
        let (status, _, answer) = exchange(address, &post("/cluster/scale", &token, &body)).await;
        assert_eq!(status, 413);
        assert_eq!(answer["error"]["code"], "body_too_large");
    }

    #[tokio::test]
    async fn a_rebound_name_is_refused_and_loopback_names_are_served() {
        let (address, _, calls) = server().await;
        drop(calls);
        let request = |host: &str| format!("GET /workers HTTP/1.0\r\nHost: {host}\r\n\r\n");
        let (status, _, body) = exchange(address, &request("rebind.example:9464")).await;
        assert_eq!(status, 421);
        assert_eq!(body["error"]["code"], "host_not_allowed");
        let (status, _, _) = exchange(address, &request("rebind.example:9464")).await;
        assert_eq!(status, 421, "the page too");
        let (status, _, _) = exchange(address, &request(&address.to_string())).await;
        assert_eq!(status, 503, "past the guard, to the (stopped) pool");
        let (status, _, _) = exchange(address, &request("localhost:9464")).await;
        assert_eq!(status, 503);
    }

    #[tokio::test]
    async fn reads_may_take_the_token_but_the_page_never_does() {
        let (address, token, calls) = server_with(Reads::TakeToken).await;
        drop(calls);
        for path in ["/workers", "/metrics", "/events", "/cluster/health"] {
            let (status, _, body) =
                exchange(address, &format!("GET {path} HTTP/1.0\r\n\r\n")).await;
            assert_eq!(status, 401, "{path}");
            assert_eq!(body["error"]["code"], "missing_token");
        }
        let with = format!("GET /workers HTTP/1.0\r\nAuthorization: Bearer {token}\r\n\r\n");
        let (status, _, _) = exchange(address, &with).await;
        assert_eq!(status, 503, "past the token, to the (stopped) pool");
        for path in dashboard::PATHS {
            let (status, head, _) =
                exchange(address, &format!("GET {path} HTTP/1.0\r\n\r\n")).await;
            assert_eq!(status, 200, "{path}");
            assert!(
                head.to_lowercase().contains("content-security-policy"),
                "{head}"
            );
        }
    }

    #[tokio::test]
    async fn a_peer_over_its_share_is_told_why_and_served_once_it_lets_go() {
        let (address, _, _calls) = server().await;
        let mut held = Vec::new();
        for _ in 0..PER_PEER {
            let stream = TcpStream::connect(address).await.unwrap();
            held.push(stream);
        }
        // Accepted in order: this one after those it holds.
        let mut over = TcpStream::connect(address).await.unwrap();
        let mut answer = String::new();
        over.read_to_string(&mut answer).await.unwrap();
        assert!(answer.starts_with("HTTP/1.1 429"), "{answer}");
        assert!(answer.contains("too_many_connections"), "{answer}");
        drop(held);
        // Served again once the server saw them go.
        loop {
            let mut stream = TcpStream::connect(address).await.unwrap();
            let _ = stream
                .write_all(b"GET /dashboard.css HTTP/1.0\r\n\r\n")
                .await;
            let mut answer = Vec::new();
            let _ = stream.read_to_end(&mut answer).await;
            if answer.starts_with(b"HTTP/1.0 200") || answer.starts_with(b"HTTP/1.1 200") {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}
