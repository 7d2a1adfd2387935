//! A loopback stand-in for the Hugging Face hub's file endpoints, serving model directories
//! from this machine so that loading by hub id is tested without a network.
//!
//! `GET /{org}/{name}/resolve/{revision}/{path}` answers as the hub does for what `hf-hub`
//! and `huggingface_hub` read: `Range` requests with `206` and `Content-Range`, an `ETag` per
//! file's content, the revision's commit in `X-Repo-Commit`; `404` with
//! `X-Error-Code: EntryNotFound` for a file the revision lacks; `401` with `RepoNotFound` for
//! an unknown repo or revision (the hub does not say which); `401` with `GatedRepo` for a gated
//! repo without its token. Every request is recorded (path, and whether it carried a token;
//! never the token itself).

use std::collections::{BTreeMap, HashMap};
use std::hash::{Hash, Hasher};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};

use axum::body::Body;
use axum::http::{header, HeaderMap, Response, StatusCode, Uri};

/// One request the stand-in received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HubRequest {
    /// The URL path, as sent.
    pub path: String,
    /// Whether an `Authorization` header came with it.
    pub authorized: bool,
}

#[derive(Default)]
struct Repo {
    /// Revision (branch, tag or the commit itself) → commit.
    revisions: HashMap<String, String>,
    /// Commit → files.
    commits: HashMap<String, BTreeMap<String, Vec<u8>>>,
    /// The token a gated repo requires.
    token: Option<String>,
}

#[derive(Default)]
struct State {
    repos: HashMap<String, Repo>,
    requests: Vec<HubRequest>,
}

/// The stand-in; stops when dropped.
pub struct StandInHub {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl StandInHub {
    /// Starts serving on a free loopback port.
    ///
    /// # Panics
    /// When no port can be bound.
    pub fn start() -> StandInHub {
        let state = Arc::new(Mutex::new(State::default()));
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
        listener.set_nonblocking(true).expect("non-blocking listener");
        let addr = listener.local_addr().expect("local address");
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let shared = state.clone();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).expect("tokio listener");
                let app = axum::Router::new().fallback(move |uri: Uri, headers: HeaderMap| {
                    let state = shared.clone();
                    async move { answer(&state, &uri, &headers) }
                });
                axum::serve(listener, app)
                    .with_graceful_shutdown(async {
                        let _ = stopped.await;
                    })
                    .await
                    .expect("stand-in hub serves");
            });
        });
        StandInHub { addr, state, stop: Some(stop), thread: Some(thread) }
    }

    /// The base URL, for `HF_ENDPOINT`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Publishes every file under `dir` as commit `commit` of repo `id`, reachable by
    /// `revision` (a branch or tag) and by the commit itself.
    ///
    /// # Panics
    /// When `dir` cannot be read.
    pub fn publish(&self, id: &str, revision: &str, commit: &str, dir: &Path) {
        let mut files = BTreeMap::new();
        collect(dir, "", &mut files);
        assert!(!files.is_empty(), "{} has no files", dir.display());
        let mut state = self.state.lock().expect("hub state");
        let repo = state.repos.entry(id.to_string()).or_default();
        repo.commits.insert(commit.to_string(), files);
        repo.revisions.insert(revision.to_string(), commit.to_string());
        repo.revisions.insert(commit.to_string(), commit.to_string());
    }

    /// Makes repo `id` gated: every request must carry `Authorization: Bearer {token}`.
    pub fn gate(&self, id: &str, token: &str) {
        self.state.lock().expect("hub state").repos.entry(id.to_string()).or_default().token = Some(token.to_string());
    }

    /// The requests received so far.
    pub fn requests(&self) -> Vec<HubRequest> {
        self.state.lock().expect("hub state").requests.clone()
    }

    /// Stops serving and waits for the server thread.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for StandInHub {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn collect(dir: &Path, prefix: &str, out: &mut BTreeMap<String, Vec<u8>>) {
    for entry in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let entry = entry.expect("directory entry");
        let name = format!("{prefix}{}", entry.file_name().to_string_lossy());
        if entry.file_type().expect("file type").is_dir() {
            collect(&entry.path(), &format!("{name}/"), out);
        } else {
            out.insert(name, std::fs::read(entry.path()).expect("read file"));
        }
    }
}

fn error(status: StatusCode, code: &str) -> Response<Body> {
    Response::builder().status(status).header("x-error-code", code).body(Body::from(code.to_string())).expect("response")
}

fn answer(state: &Mutex<State>, uri: &Uri, headers: &HeaderMap) -> Response<Body> {
    let auth = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).map(str::to_string);
    let mut state = state.lock().expect("hub state");
    state.requests.push(HubRequest { path: uri.path().to_string(), authorized: auth.is_some() });
    // org / name / "resolve" / revision / path…
    let parts: Vec<&str> = uri.path().trim_start_matches('/').splitn(5, '/').collect();
    let [org, name, "resolve", revision, file] = parts.as_slice() else {
        return error(StatusCode::NOT_FOUND, "NotFound");
    };
    let revision = revision.replace("%2F", "/").replace("%2f", "/");
    let Some(repo) = state.repos.get(&format!("{org}/{name}")) else {
        return error(StatusCode::UNAUTHORIZED, "RepoNotFound");
    };
    if let Some(token) = &repo.token {
        if auth.as_deref() != Some(format!("Bearer {token}").as_str()) {
            return error(StatusCode::UNAUTHORIZED, "GatedRepo");
        }
    }
    let Some(commit) = repo.revisions.get(&revision) else {
        return error(StatusCode::UNAUTHORIZED, "RevisionNotFound");
    };
    let Some(body) = repo.commits[commit].get(*file) else {
        return Response::builder()
            .status(StatusCode::NOT_FOUND)
            .header("x-error-code", "EntryNotFound")
            .header("x-repo-commit", commit.as_str())
            .body(Body::from("Entry not found"))
            .expect("response");
    };
    let mut h = std::collections::hash_map::DefaultHasher::new();
    body.hash(&mut h);
    let etag = format!("\"{:016x}{:08x}\"", h.finish(), body.len());
    let len = body.len();
    let range = headers.get(header::RANGE).and_then(|v| v.to_str().ok()).and_then(|r| r.strip_prefix("bytes="));
    let builder = Response::builder().header(header::ETAG, etag).header("x-repo-commit", commit.as_str()).header(header::ACCEPT_RANGES, "bytes");
    match range.and_then(|r| r.split_once('-')) {
        Some((start, end)) => {
            let start: usize = start.parse().unwrap_or(0);
            let end: usize = end.parse().map_or(len.saturating_sub(1), |e: usize| e.min(len.saturating_sub(1)));
            if len == 0 || start > end {
                return error(StatusCode::RANGE_NOT_SATISFIABLE, "RangeNotSatisfiable");
            }
            builder
                .status(StatusCode::PARTIAL_CONTENT)
                .header(header::CONTENT_RANGE, format!("bytes {start}-{end}/{len}"))
                .body(Body::from(body[start..=end].to_vec()))
                .expect("response")
        }
        None => builder.status(StatusCode::OK).body(Body::from(body.clone())).expect("response"),
    }
}
