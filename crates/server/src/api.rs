//! The JSON API: routes, the one error → status mapping, and ingest jobs (one worker, a
//! bounded queue) with progress streamed as server-sent events.

use crate::wire::{ChunkOut, HitOut, IngestOut, ItemOut, SearchOut, ShowOut};
use crate::ServeOptions;
use axum::body::Body;
use axum::extract::{FromRequestParts, Path as UrlPath, State as AxState};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures_util::StreamExt;
use mnema_core::{Config, Filters, Kind, SearchMode};
use mnema_models::manager::ModelManager;
use mnema_store::Store;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// Ingest jobs waiting behind the running one; one more is refused (429).
pub(crate) const JOB_QUEUE: usize = 16;
/// Finished jobs kept for `/api/jobs/{id}` and status; older ones are forgotten.
pub(crate) const KEEP_FINISHED_JOBS: usize = 100;
/// `/api/ocr` and `/api/transcribe` requests served at once; more get 429.
pub(crate) const HEAVY_REQUESTS: usize = 2;
/// Longest upload name, in bytes (file systems allow 255; room is left for ` (N)`).
pub(crate) const MAX_NAME_BYTES: usize = 200;

/// Shared by all requests.
pub(crate) struct Inner {
    config: Config,
    models: Arc<ModelManager>,
    /// The store for reads and deletes; ingest jobs open their own handle (SQLite WAL lets
    /// readers go on while a job writes).
    store: Box<dyn Store>,
    pub(crate) opts: ServeOptions,
    /// The address the server is bound to and this machine's name (the `Host` check).
    pub(crate) bound: SocketAddr,
    pub(crate) hostname: Option<String>,
    /// Jobs by id: at most one running, [`JOB_QUEUE`] queued, [`KEEP_FINISHED_JOBS`] finished.
    jobs: Mutex<BTreeMap<u64, Arc<Job>>>,
    queue: std::sync::mpsc::SyncSender<(Arc<Job>, JobPaths)>,
    /// OCR comparisons and transcriptions run at once (each holds models and a core or more).
    heavy: Arc<tokio::sync::Semaphore>,
    next_job: std::sync::atomic::AtomicU64,
    started: Instant,
    /// Recent query vectors: typing refines and repeats queries, and a query's embedding is
    /// most of a hybrid search's cost (~20 ms of CPU against ~5 ms for the rest).
    query_vectors: Mutex<QueryCache>,
    pub(crate) history: crate::history::History,
}

#[derive(Default)]
struct QueryCache {
    map: HashMap<String, (Arc<Vec<f32>>, u64)>,
    clock: u64,
}

impl QueryCache {
    const CAP: usize = 512;

    fn get(&mut self, k: &str) -> Option<Arc<Vec<f32>>> {
        self.clock += 1;
        let now = self.clock;
        self.map.get_mut(k).map(|e| {
            e.1 = now;
            e.0.clone()
        })
    }

    fn put(&mut self, k: String, v: Arc<Vec<f32>>) {
        if self.map.len() >= Self::CAP {
            if let Some(old) = self.map.iter().min_by_key(|(_, e)| e.1).map(|(k, _)| k.clone()) {
                self.map.remove(&old);
            }
        }
        self.clock += 1;
        self.map.insert(k, (v, self.clock));
    }
}

pub(crate) type State = Arc<Inner>;

pub(crate) fn new_state(config: Config, models: Arc<ModelManager>, store: Box<dyn Store>, opts: ServeOptions, bound: SocketAddr) -> State {
    let (queue, jobs_rx) = std::sync::mpsc::sync_channel(JOB_QUEUE);
    let st = Arc::new(Inner {
        config,
        models,
        store,
        opts,
        bound,
        hostname: sysinfo::System::host_name().ok(),
        jobs: Mutex::new(BTreeMap::new()),
        queue,
        heavy: Arc::new(tokio::sync::Semaphore::new(HEAVY_REQUESTS)),
        next_job: 1.into(),
        started: Instant::now(),
        query_vectors: Mutex::default(),
        history: Default::default(),
    });
    // One worker runs the jobs in order: ingest is CPU- and memory-bound, so parallel jobs
    // would only compete for the same cores and model budget.
    let worker = Arc::downgrade(&st);
    std::thread::Builder::new()
        .name("ingest-jobs".into())
        .spawn(move || {
            for (job, paths) in jobs_rx {
                let Some(st) = worker.upgrade() else { return };
                run_job(&st, &job, &paths);
            }
        })
        .expect("spawning the ingest worker");
    clean_tmp(&st.config.home);
    st
}

/// Private scratch space for request bodies, inside the data directory (never /tmp).
fn tmp_dir(home: &Path) -> std::io::Result<PathBuf> {
    let dir = home.join("tmp");
    private_dir(&dir)?;
    Ok(dir)
}

/// Creates `dir` (and parents) with the new levels readable by the owner only.
fn private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)
}

/// Bodies left by a killed server (older than an hour, so another server's are spared).
fn clean_tmp(home: &Path) {
    let Ok(entries) = std::fs::read_dir(home.join("tmp")) else { return };
    for e in entries.flatten() {
        let old = e.metadata().ok().and_then(|m| m.modified().ok()).and_then(|t| t.elapsed().ok()).is_some_and(|a| a.as_secs() > 3600);
        if old && e.file_name().to_str().is_some_and(|n| n.starts_with(".body-")) {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

/// Every API failure, mapped to a status here and nowhere else.
#[derive(Debug)]
pub(crate) enum ApiError {
    BadRequest(String),
    Unauthorized,
    Forbidden(String),
    NotFound(String),
    MethodNotAllowed,
    Timeout,
    TooLarge(u64),
    UnsupportedType(String),
    /// A range past the end of a file of this many bytes.
    NotSatisfiable(u64),
    Misdirected(String),
    Busy(String),
    Internal(String),
    Unavailable(String),
    DiskFull(String),
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut extra = None;
        let (status, msg) = match self {
            ApiError::BadRequest(m) => (StatusCode::BAD_REQUEST, m),
            ApiError::Unauthorized => (
                StatusCode::UNAUTHORIZED,
                "missing or wrong token (send `Authorization: Bearer TOKEN`, or open /?token=TOKEN once in the browser)".into(),
            ),
            ApiError::Forbidden(m) => (StatusCode::FORBIDDEN, m),
            ApiError::NotFound(m) => (StatusCode::NOT_FOUND, m),
            ApiError::MethodNotAllowed => (StatusCode::METHOD_NOT_ALLOWED, "method not allowed on this route".into()),
            ApiError::Timeout => {
                (StatusCode::REQUEST_TIMEOUT, format!("the request body stalled for {}s", crate::guard::BODY_IDLE.as_secs()))
            }
            ApiError::TooLarge(limit) => {
                (StatusCode::PAYLOAD_TOO_LARGE, format!("upload larger than the limit of {}", mnema_core::ByteSize(limit)))
            }
            ApiError::UnsupportedType(m) => (StatusCode::UNSUPPORTED_MEDIA_TYPE, m),
            ApiError::NotSatisfiable(total) => {
                extra = HeaderValue::from_str(&format!("bytes */{total}")).ok().map(|v| (header::CONTENT_RANGE, v));
                (StatusCode::RANGE_NOT_SATISFIABLE, format!("range outside the file ({total} bytes)"))
            }
            ApiError::Misdirected(m) => (StatusCode::MISDIRECTED_REQUEST, m),
            ApiError::Busy(m) => (StatusCode::TOO_MANY_REQUESTS, m),
            ApiError::Internal(m) => (StatusCode::INTERNAL_SERVER_ERROR, m),
            ApiError::Unavailable(m) => (StatusCode::SERVICE_UNAVAILABLE, m),
            ApiError::DiskFull(m) => (StatusCode::INSUFFICIENT_STORAGE, m),
        };
        let mut r = (status, Json(serde_json::json!({ "error": msg }))).into_response();
        if let Some((k, v)) = extra {
            r.headers_mut().insert(k, v);
        }
        r
    }
}

impl ApiError {
    /// A failed file operation on the server's side (a full disk is said so).
    fn io(what: &str, e: &std::io::Error) -> ApiError {
        if e.kind() == std::io::ErrorKind::StorageFull || e.kind() == std::io::ErrorKind::QuotaExceeded {
            ApiError::DiskFull(format!("{what}: the disk is full"))
        } else {
            ApiError::Internal(format!("{what}: {e}"))
        }
    }
}

/// What the store calls the user's input (an unusable data directory, a store of another
/// embedder, files it may not write) is the server's own setup here, never the request's:
/// 503, not 400.
fn store_kind(kind: mnema_core::ErrorKind) -> mnema_core::ErrorKind {
    match kind {
        mnema_core::ErrorKind::Input => mnema_core::ErrorKind::Unavailable,
        k => k,
    }
}

impl From<mnema_store::StoreError> for ApiError {
    fn from(e: mnema_store::StoreError) -> Self {
        ApiError::of_kind(store_kind(e.kind()), e.to_string())
    }
}

impl From<mnema_search::SearchError> for ApiError {
    fn from(e: mnema_search::SearchError) -> Self {
        let kind = match &e {
            mnema_search::SearchError::Store(s) => store_kind(s.kind()),
            _ => e.kind(),
        };
        ApiError::of_kind(kind, e.to_string())
    }
}

impl From<mnema_engine::EngineError> for ApiError {
    fn from(e: mnema_engine::EngineError) -> Self {
        ApiError::of_kind(e.kind(), e.to_string())
    }
}

impl From<mnema_extract::ExtractError> for ApiError {
    fn from(e: mnema_extract::ExtractError) -> Self {
        ApiError::of_kind(e.kind(), e.to_string())
    }
}

impl ApiError {
    /// The one place an error's kind gets a status: input 400, busy 429, an unavailable
    /// engine or a bad model file 503, a full disk 507, anything else 500.
    fn of_kind(kind: mnema_core::ErrorKind, msg: String) -> ApiError {
        use mnema_core::ErrorKind as K;
        match kind {
            K::Input => ApiError::BadRequest(msg),
            K::Busy => ApiError::Busy(msg),
            K::Unavailable | K::ModelFile => ApiError::Unavailable(msg),
            K::DiskFull => ApiError::DiskFull(msg),
            K::Internal => ApiError::Internal(msg),
        }
    }
}

/// `Query<T>` whose rejections (bad numbers, repeated keys) are JSON 400s.
pub(crate) struct ApiQuery<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        axum::extract::Query::try_from_uri(&parts.uri).map(|q| ApiQuery(q.0)).map_err(|e| ApiError::BadRequest(e.body_text()))
    }
}

type ApiResult<T> = Result<T, ApiError>;

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> ApiResult<T> + Send + 'static) -> ApiResult<T> {
    tokio::task::spawn_blocking(f).await.map_err(|e| ApiError::Internal(format!("worker failed: {e}")))?
}

/// Samples resource figures every 2 s for the resources page.
pub(crate) fn start_history(state: &State) {
    crate::history::install();
    let st = state.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(2));
        loop {
            tick.tick().await;
            st.history.sample(st.started.elapsed().as_secs_f64(), st.models.used());
        }
    });
}

/// The whole application: the API, the page, and the checks every request passes (outermost
/// first: host, origin, token).
pub(crate) fn app(state: State) -> Router {
    Router::new()
        .route("/api/health", get(health))
        .route("/api/search", get(search))
        .route("/api/items/{id}", get(item).delete(delete_item))
        .route("/api/files/{id}", get(file))
        .route("/api/status", get(status))
        .route("/api/openapi.json", get(openapi))
        .route("/api/ingest", post(ingest))
        .route("/api/upload", post(upload))
        .route("/api/ocr", post(ocr))
        .route("/api/ocr/engines", get(ocr_engines))
        .route("/api/transcribe", post(transcribe))
        .route("/api/models", get(models))
        .route("/api/jobs/{id}", get(job))
        .route("/api/jobs/{id}/events", get(job_events))
        .merge(crate::ui::router())
        .fallback(|| async { ApiError::NotFound("no such route".into()) })
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        .layer(axum::middleware::from_fn_with_state(state.clone(), crate::guard::auth))
        .layer(axum::middleware::map_response(same_origin_only))
        .layer(axum::middleware::from_fn(crate::guard::check_origin))
        .layer(axum::middleware::from_fn_with_state(state.clone(), crate::guard::check_host))
        .with_state(state)
}

/// Every response may be read only by this server's own pages: another site cannot embed a
/// file (`<img>`, `<audio>`, `<script>`) to learn whether an item exists or to read a note, and
/// browsers never guess a type the server did not send.
async fn same_origin_only(mut resp: Response) -> Response {
    let h = resp.headers_mut();
    h.insert(HeaderName::from_static("cross-origin-resource-policy"), HeaderValue::from_static("same-origin"));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    resp
}

async fn health(AxState(st): AxState<State>) -> ApiResult<Json<serde_json::Value>> {
    let st2 = st.clone();
    let items = blocking(move || Ok(st2.store.stats()?.items)).await?;
    Ok(Json(
        serde_json::json!({ "ok": true, "version": env!("CARGO_PKG_VERSION"), "items": items, "uptime_s": st.started.elapsed().as_secs() }),
    ))
}

#[derive(Deserialize)]
struct SearchParams {
    q: Option<String>,
    limit: Option<usize>,
    mode: Option<String>,
    kind: Option<String>,
    path: Option<String>,
    since: Option<String>,
    until: Option<String>,
}

async fn search(AxState(st): AxState<State>, ApiQuery(p): ApiQuery<SearchParams>) -> ApiResult<Json<serde_json::Value>> {
    let started = Instant::now();
    let text = p.q.unwrap_or_default();
    if text.trim().is_empty() {
        return Err(ApiError::BadRequest("query parameter q is empty".into()));
    }
    if text.len() > 2000 {
        return Err(ApiError::BadRequest("query longer than 2000 bytes".into()));
    }
    let mode_s = p.mode.unwrap_or_else(|| "hybrid".into());
    let mode: SearchMode = mode_s.parse().map_err(ApiError::BadRequest)?;
    let mut kinds = Vec::new();
    for k in p.kind.iter().flat_map(|k| k.split(',')).filter(|k| !k.is_empty()) {
        kinds.push(k.parse::<Kind>().map_err(ApiError::BadRequest)?);
    }
    let time = |s: Option<String>| -> ApiResult<Option<i64>> {
        s.filter(|s| !s.is_empty()).map(|s| mnema_core::time::parse(&s).map_err(ApiError::BadRequest)).transpose()
    };
    let q = mnema_search::SearchQuery {
        text: text.clone(),
        mode,
        filters: Filters { kinds, path_prefix: p.path.filter(|s| !s.is_empty()), since: time(p.since)?, until: time(p.until)? },
        limit: p.limit.unwrap_or(10).clamp(1, 200),
    };
    let hits = blocking(move || {
        // The query vector is computed before taking the store, so searches embed in parallel.
        let name = st.store.embedder()?.map(|e| e.0);
        let vector = match (mode, name) {
            (SearchMode::Keyword, _) | (_, None) => None,
            (_, Some(name)) => {
                let key = format!("{name}\u{1}{}", q.text);
                let cached = st.query_vectors.lock().unwrap_or_else(|e| e.into_inner()).get(&key);
                match cached {
                    Some(v) => Some(v),
                    None => {
                        let e = mnema_ingest::acquire_embedder(&st.config, &st.models, &name)?;
                        let _s = mnema_core::profile::stage("embed");
                        let v = e.embed(&[q.text.as_str()], mnema_extract::Role::Query)?.pop().map(Arc::new);
                        if let Some(v) = &v {
                            st.query_vectors.lock().unwrap_or_else(|e| e.into_inner()).put(key, v.clone());
                        }
                        v
                    }
                }
            }
        };
        Ok(mnema_search::search_with_vector(&*st.store, vector.as_deref().map(|v| v.as_slice()), &q)?)
    })
    .await?;
    let hits: Vec<HitOut> = hits.into_iter().map(HitOut::from).collect();
    let elapsed_ms = (started.elapsed().as_secs_f64() * 1e4).round() / 10.0;
    Ok(Json(
        serde_json::to_value(SearchOut { query: &text, mode: &mode_s, hits, elapsed_ms }).map_err(|e| ApiError::Internal(e.to_string()))?,
    ))
}

fn parse_id(s: &str) -> ApiResult<i64> {
    s.parse::<i64>().map_err(|_| ApiError::NotFound(format!("no item with id '{s}'")))
}

async fn item(AxState(st): AxState<State>, UrlPath(id): UrlPath<String>) -> ApiResult<Json<serde_json::Value>> {
    let id = parse_id(&id)?;
    blocking(move || {
        let store = &st.store;
        let item = store.item(id)?.ok_or_else(|| ApiError::NotFound(format!("no item with id {id}")))?;
        let chunks: Vec<ChunkOut> = store.chunks(id)?.into_iter().map(|(c, _)| c.into()).collect();
        Ok(Json(serde_json::to_value(ShowOut { item: ItemOut::from(item), chunks }).map_err(|e| ApiError::Internal(e.to_string()))?))
    })
    .await
}

async fn delete_item(AxState(st): AxState<State>, UrlPath(id): UrlPath<String>) -> ApiResult<Json<serde_json::Value>> {
    let id = parse_id(&id)?;
    blocking(move || {
        // One transaction: of two deletes at once, the second finds nothing (404).
        let item = st.store.delete_item(id)?.ok_or_else(|| ApiError::NotFound(format!("no item with id {id}")))?;
        Ok(Json(serde_json::json!({ "id": id, "deleted": true, "path": item.path })))
    })
    .await
}

#[derive(Deserialize)]
struct FileParams {
    thumb: Option<String>,
}

fn content_type(path: &std::path::Path) -> &'static str {
    match path.extension().and_then(|e| e.to_str()).map(|e| e.to_ascii_lowercase()).as_deref() {
        Some("png") => "image/png",
        Some("jpg" | "jpeg") => "image/jpeg",
        Some("webp") => "image/webp",
        Some("gif") => "image/gif",
        Some("bmp") => "image/bmp",
        Some("tif" | "tiff") => "image/tiff",
        Some("wav") => "audio/wav",
        Some("mp3") => "audio/mpeg",
        Some("m4a" | "aac") => "audio/mp4",
        Some("ogg" | "opus") => "audio/ogg",
        Some("flac") => "audio/flac",
        Some("md" | "markdown" | "txt" | "text" | "org" | "rst") => "text/plain; charset=utf-8",
        _ => "application/octet-stream",
    }
}

/// The item's original file (byte ranges supported, so audio can seek), or a 320 px wide
/// PNG thumbnail of an image with `?thumb=1`. Only paths recorded in the store are served.
async fn file(
    AxState(st): AxState<State>,
    UrlPath(id): UrlPath<String>,
    ApiQuery(p): ApiQuery<FileParams>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let id = parse_id(&id)?;
    let thumb = p.thumb.as_deref().is_some_and(|t| t == "1" || t == "true");
    let range = headers.get(header::RANGE).and_then(|v| v.to_str().ok()).map(str::to_string);
    blocking(move || {
        let item = st.store.item(id)?.ok_or_else(|| ApiError::NotFound(format!("no item with id {id}")))?;
        let path = std::path::PathBuf::from(&item.path);
        let gone = || ApiError::NotFound(format!("file of item {id} is gone: {}", item.path));
        let total = std::fs::metadata(&path).map_err(|_| gone())?.len();
        if thumb {
            if item.kind != Kind::Image {
                return Err(ApiError::BadRequest(format!("item {id} is not an image")));
            }
            let cost = mnema_extract::image::file_decode_cost(&path).unwrap_or_default();
            let _decoding = reserve_decode(&st, &format!("thumbnail of item {id}"), cost.bytes)?;
            let img = mnema_extract::image::decode_image(&path, 256 << 20).map_err(|e| ApiError::Internal(e.to_string()))?;
            let t = img.thumbnail(320, 320);
            let mut out = std::io::Cursor::new(Vec::new());
            t.write_to(&mut out, image::ImageFormat::Png).map_err(|e| ApiError::Internal(e.to_string()))?;
            return Ok(([(header::CONTENT_TYPE, "image/png"), (header::CACHE_CONTROL, "max-age=3600")], out.into_inner()).into_response());
        }
        let ct = content_type(&path);
        let (status, start, end) = match range.as_deref().map_or(Range::Whole, |r| parse_range(r, total)) {
            Range::Whole => (StatusCode::OK, 0, total),
            Range::Part(a, b) => (StatusCode::PARTIAL_CONTENT, a, b + 1),
            Range::Outside => return Err(ApiError::NotSatisfiable(total)),
        };
        // Streamed in pieces: a request costs one buffer, not the file (a player seeking in a
        // long recording asks for many ranges, three downloads of a 1 GiB WAV are not 3 GiB).
        let mut f = std::fs::File::open(&path).map_err(|_| gone())?;
        std::io::Seek::seek(&mut f, std::io::SeekFrom::Start(start)).map_err(|_| gone())?;
        let mut resp = Response::new(file_body(f, end - start));
        *resp.status_mut() = status;
        let h = resp.headers_mut();
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static(ct));
        h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
        h.insert(header::CONTENT_LENGTH, HeaderValue::from(end - start));
        if status == StatusCode::PARTIAL_CONTENT {
            if let Ok(v) = HeaderValue::from_str(&format!("bytes {start}-{}/{total}", end - 1)) {
                h.insert(header::CONTENT_RANGE, v);
            }
        }
        Ok(resp)
    })
    .await
}

/// `len` bytes of `f` from its current position, read 64 KiB at a time as the client takes them.
fn file_body(f: std::fs::File, len: u64) -> Body {
    const PIECE: u64 = 64 << 10;
    let stream = futures_util::stream::unfold((tokio::fs::File::from_std(f), len), |(mut f, left)| async move {
        use tokio::io::AsyncReadExt;
        if left == 0 {
            return None;
        }
        let mut buf = vec![0u8; left.min(PIECE) as usize];
        match f.read(&mut buf).await {
            Ok(0) => Some((Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "the file shrank while being sent")), (f, 0))),
            Ok(n) => {
                buf.truncate(n);
                Some((Ok(buf), (f, left - n as u64)))
            }
            Err(e) => Some((Err(e), (f, 0))),
        }
    });
    Body::from_stream(stream)
}

/// What a `Range` header asks of a file.
#[derive(Debug, PartialEq)]
enum Range {
    /// No usable range (absent, another unit, malformed): the whole file.
    Whole,
    /// Inclusive bytes `a..=b`.
    Part(u64, u64),
    /// Starts past the end (416).
    Outside,
}

/// `bytes=a-b`, `bytes=a-`, `bytes=-n` (the first range of a list) within `total` bytes.
fn parse_range(r: &str, total: u64) -> Range {
    let Some(spec) = r.strip_prefix("bytes=").and_then(|s| s.split(',').next()).map(str::trim) else { return Range::Whole };
    let Some((a, b)) = spec.split_once('-') else { return Range::Whole };
    let (a, b) = (a.trim(), b.trim());
    let num = |s: &str| if s.is_empty() { Ok(None) } else { s.parse::<u64>().map(Some) };
    let (Ok(a), Ok(b)) = (num(a), num(b)) else { return Range::Whole };
    match (a, b) {
        (Some(a), b) if b.is_some_and(|b| b < a) => Range::Whole,
        (Some(a), _) if a >= total => Range::Outside,
        (Some(a), b) => Range::Part(a, b.unwrap_or(u64::MAX).min(total - 1)),
        (None, Some(0)) => Range::Outside,
        (None, Some(_)) if total == 0 => Range::Outside,
        (None, Some(n)) => Range::Part(total.saturating_sub(n), total - 1),
        (None, None) => Range::Whole,
    }
}

async fn status(AxState(st): AxState<State>) -> ApiResult<Json<serde_json::Value>> {
    blocking(move || {
        let mut v = crate::wire::status(&st.config, st.opts.budget, &st.models, &*st.store)?;
        let jobs: Vec<serde_json::Value> = st.jobs.lock().unwrap_or_else(|e| e.into_inner()).values().map(|j| j.summary()).collect();
        v["jobs"] = jobs.into();
        v["history"] = st.history.to_json();
        Ok(Json(v))
    })
    .await
}

async fn openapi() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/json")], include_str!("openapi.json"))
}

/// An ingest job: progress counters and the per-file outcomes so far.
pub(crate) struct Job {
    id: u64,
    total: std::sync::atomic::AtomicUsize,
    state: Mutex<JobState>,
    changed: tokio::sync::watch::Sender<usize>,
}

#[derive(Default)]
struct JobState {
    files: Vec<serde_json::Value>,
    started: bool,
    done: bool,
    error: Option<String>,
}

impl Job {
    fn snapshot(&self) -> serde_json::Value {
        let mut v = self.summary();
        v["files"] = self.state.lock().unwrap_or_else(|e| e.into_inner()).files.clone().into();
        v
    }

    /// The snapshot without the per-file lines (for status, which lists every job).
    fn summary(&self) -> serde_json::Value {
        let s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let failed = s.files.iter().filter(|f| f["status"] == "failed").count();
        serde_json::json!({ "id": self.id, "total": self.total.load(std::sync::atomic::Ordering::Relaxed), "done_files": s.files.len(), "failed": failed, "queued": !s.started, "done": s.done, "error": s.error })
    }

    fn is_done(&self) -> bool {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).done
    }
}

/// What a job reads: `paths`, and of the files found under them only those inside `roots`
/// (a symbolic link inside an allowed folder may point out of it).
pub(crate) struct JobPaths {
    paths: Vec<PathBuf>,
    roots: Vec<PathBuf>,
}

#[derive(Deserialize)]
struct IngestBody {
    paths: Vec<String>,
}

/// Starts an ingest job over server paths. Only paths inside an allowed root are taken:
/// `--allow-path` folders, what was ingested from the command line, and the uploads folder;
/// paths are compared after resolving `..` and symbolic links.
async fn ingest(
    AxState(st): AxState<State>,
    body: Result<Json<IngestBody>, axum::extract::rejection::JsonRejection>,
) -> ApiResult<Response> {
    let Json(body) = body.map_err(|e| match e.status() {
        StatusCode::PAYLOAD_TOO_LARGE => ApiError::TooLarge(2 << 20),
        StatusCode::UNSUPPORTED_MEDIA_TYPE => ApiError::UnsupportedType("send the body as Content-Type: application/json".into()),
        _ if e.body_text().contains(crate::guard::BODY_TIMEOUT_TEXT) => ApiError::Timeout,
        _ => ApiError::BadRequest(format!("expected JSON {{\"paths\": [...]}}: {}", e.body_text())),
    })?;
    if body.paths.is_empty() {
        return Err(ApiError::BadRequest("paths is empty".into()));
    }
    let st2 = st.clone();
    let paths = blocking(move || {
        let roots = allowed_roots(&st2)?;
        let paths = body.paths.iter().map(|p| allowed_path(&roots, Path::new(p))).collect::<ApiResult<Vec<PathBuf>>>()?;
        Ok(JobPaths { paths, roots })
    })
    .await?;
    let job = start_job(&st, paths)?;
    Ok((StatusCode::ACCEPTED, Json(serde_json::json!({ "job": job, "events": format!("/api/jobs/{job}/events") }))).into_response())
}

/// Where `POST /api/ingest` may read, each resolved (missing ones left out).
fn allowed_roots(st: &State) -> ApiResult<Vec<PathBuf>> {
    let mut roots = st.opts.allow.clone();
    roots.extend(st.store.roots()?);
    roots.push(st.config.home.join("uploads"));
    Ok(roots.iter().filter_map(|r| r.canonicalize().ok()).collect())
}

/// `p` resolved, if it lies inside one of `roots`; else 403 naming it (404 when it is not there).
fn allowed_path(roots: &[PathBuf], p: &Path) -> ApiResult<PathBuf> {
    if !p.is_absolute() {
        return Err(ApiError::BadRequest(format!("{}: give an absolute path", p.display())));
    }
    let real = p.canonicalize().map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => ApiError::NotFound(format!("{}: no such file or folder", p.display())),
        _ => ApiError::Forbidden(format!("{}: {e}", p.display())),
    })?;
    if roots.iter().any(|r| real.starts_with(r)) {
        Ok(real)
    } else {
        Err(ApiError::Forbidden(format!(
            "{} is outside the folders this server may read: start it with `mnema serve --allow-path DIR`, or ingest it once with `mnema ingest`",
            p.display()
        )))
    }
}

/// Queues a job for the worker; 429 when [`JOB_QUEUE`] jobs already wait.
fn start_job(st: &State, paths: JobPaths) -> ApiResult<u64> {
    let id = st.next_job.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let (tx, _) = tokio::sync::watch::channel(0);
    let job = Arc::new(Job { id, total: 0.into(), state: Mutex::new(JobState::default()), changed: tx });
    let mut jobs = st.jobs.lock().unwrap_or_else(|e| e.into_inner());
    match st.queue.try_send((job.clone(), paths)) {
        Ok(()) => {}
        Err(std::sync::mpsc::TrySendError::Full(_)) => {
            return Err(ApiError::Busy(format!("{JOB_QUEUE} ingest jobs are already waiting: try again when one has finished")))
        }
        Err(std::sync::mpsc::TrySendError::Disconnected(_)) => return Err(ApiError::Internal("the ingest worker has stopped".into())),
    }
    jobs.insert(id, job);
    prune(&mut jobs);
    Ok(id)
}

/// Forgets the oldest finished jobs beyond the [`KEEP_FINISHED_JOBS`] kept.
fn prune(jobs: &mut BTreeMap<u64, Arc<Job>>) {
    let finished: Vec<u64> = jobs.iter().filter(|(_, j)| j.is_done()).map(|(id, _)| *id).collect();
    for old in finished.iter().take(finished.len().saturating_sub(KEEP_FINISHED_JOBS)) {
        jobs.remove(old);
    }
}

/// Runs one job on the worker thread.
fn run_job(st: &State, job: &Job, paths: &JobPaths) {
    job.state.lock().unwrap_or_else(|e| e.into_inner()).started = true;
    let _ = job.changed.send(0);
    let run = || -> Result<(), String> {
        let (found, mut missing) = mnema_ingest::collect(&paths.paths);
        let (files, outside): (Vec<PathBuf>, Vec<PathBuf>) =
            found.into_iter().partition(|f| f.canonicalize().is_ok_and(|real| paths.roots.iter().any(|r| real.starts_with(r))));
        missing.extend(outside.into_iter().map(|path| mnema_ingest::Outcome {
            path,
            id: None,
            kind: None,
            status: mnema_ingest::Status::Failed,
            error: Some("outside the folders this server may read (a symbolic link leads out): not read".into()),
            chunks: 0,
        }));
        job.total.store(files.len() + missing.len(), std::sync::atomic::Ordering::Relaxed);
        let push = |o: &mnema_ingest::Outcome| {
            let v = serde_json::to_value(IngestOut::from(o)).unwrap_or_default();
            let n = {
                let mut s = job.state.lock().unwrap_or_else(|e| e.into_inner());
                s.files.push(v);
                s.files.len()
            };
            let _ = job.changed.send(n);
        };
        missing.iter().for_each(push);
        let store = mnema_store::SqliteStore::open(&st.config.home).map_err(|e| e.to_string())?;
        mnema_ingest::Ingester::new(&st.config, &store, &st.models).run(&files, push).map_err(|e| e.to_string())?;
        Ok(())
    };
    // A panic in one job (a bug in a decoder, say) ends that job with an error; the worker
    // goes on with the next one.
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(run)).unwrap_or_else(|p| {
        let what = p.downcast_ref::<&str>().map(|s| s.to_string()).or_else(|| p.downcast_ref::<String>().cloned()).unwrap_or_default();
        tracing::error!("ingest job {} panicked: {what}", job.id);
        Err(format!("internal error: the job stopped on a bug ({what})"))
    });
    let mut s = job.state.lock().unwrap_or_else(|e| e.into_inner());
    s.done = true;
    s.error = r.err();
    let n = s.files.len();
    drop(s);
    let _ = job.changed.send(n + 1);
    prune(&mut st.jobs.lock().unwrap_or_else(|e| e.into_inner()));
}

/// Upload a file (raw body, `?name=FILE`): saved under `<home>/uploads/` and ingested.
#[derive(Deserialize)]
struct UploadParams {
    name: Option<String>,
}

/// A file name from a client: one plain name (no folders, not hidden, no control characters),
/// at most [`MAX_NAME_BYTES`] bytes.
fn upload_name(name: Option<&str>) -> ApiResult<&str> {
    let name = name.unwrap_or_default();
    if name.is_empty() || name.starts_with('.') || name.chars().any(|c| matches!(c, '/' | '\\') || c.is_control()) {
        return Err(ApiError::BadRequest(format!("bad file name '{}' (a plain name like memo.m4a)", name.escape_debug())));
    }
    if name.len() > MAX_NAME_BYTES {
        return Err(ApiError::BadRequest(format!("file name is {} bytes long, more than {MAX_NAME_BYTES}: shorten it", name.len())));
    }
    Ok(name)
}

async fn upload(AxState(st): AxState<State>, ApiQuery(p): ApiQuery<UploadParams>, headers: HeaderMap, body: Body) -> ApiResult<Response> {
    let name = upload_name(p.name.as_deref())?.to_string();
    raw_content_type(&headers)?;
    let tmp = body_to_file(&st, &headers, body, "").await?;
    let dir = st.config.home.join("uploads");
    let (path, roots) = blocking(move || {
        let path = place(tmp, &dir, &name)?;
        let root = dir.canonicalize().map_err(|e| ApiError::io(&dir.display().to_string(), &e))?;
        Ok((path, vec![root]))
    })
    .await?;
    let job = match start_job(&st, JobPaths { paths: vec![path.clone()], roots }) {
        Ok(job) => job,
        Err(e) => {
            let _ = std::fs::remove_file(&path);
            return Err(e);
        }
    };
    Ok((StatusCode::ACCEPTED, Json(serde_json::json!({ "job": job, "path": path, "events": format!("/api/jobs/{job}/events") })))
        .into_response())
}

/// A place among the [`HEAVY_REQUESTS`] OCR/transcription requests, or 429.
fn heavy_permit(st: &State) -> ApiResult<tokio::sync::OwnedSemaphorePermit> {
    st.heavy.clone().try_acquire_owned().map_err(|_| {
        ApiError::Busy(format!("{HEAVY_REQUESTS} OCR or transcription requests are already running: try again when one has finished"))
    })
}

/// Moves an upload into `dir` as `name`, or `stem (2).ext`, `stem (3).ext`, … when taken:
/// an upload never replaces an earlier file.
fn place(tmp: tempfile::NamedTempFile, dir: &Path, name: &str) -> ApiResult<PathBuf> {
    private_dir(dir).map_err(|e| ApiError::io(&format!("cannot create {}", dir.display()), &e))?;
    let (stem, ext) = match name.rfind('.') {
        Some(i) if i > 0 => name.split_at(i),
        _ => (name, ""),
    };
    let mut tmp = tmp;
    for n in 1..=10_000 {
        let path = if n == 1 { dir.join(name) } else { dir.join(format!("{stem} ({n}){ext}")) };
        match tmp.persist_noclobber(&path) {
            Ok(_) => return Ok(path),
            Err(e) if e.error.kind() == std::io::ErrorKind::AlreadyExists => tmp = e.file,
            Err(e) => return Err(ApiError::io(&format!("cannot save {}", path.display()), &e.error)),
        }
    }
    Err(ApiError::Busy(format!("too many uploads named '{name}'")))
}

/// A raw upload must say what it is: `application/octet-stream` or the file's own type. The
/// types a page may send cross-site without asking (text/plain, forms) are refused, so a
/// foreign page cannot post a file even where the origin check does not apply.
fn raw_content_type(h: &HeaderMap) -> ApiResult<()> {
    let ct = h.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or_default();
    let essence = ct.split(';').next().unwrap_or_default().trim().to_ascii_lowercase();
    if essence.is_empty() || matches!(essence.as_str(), "text/plain" | "application/x-www-form-urlencoded" | "multipart/form-data") {
        let shown = if ct.is_empty() { "none" } else { ct };
        return Err(ApiError::UnsupportedType(format!(
            "send the file's bytes as Content-Type: application/octet-stream (or the file's type), not {shown}"
        )));
    }
    Ok(())
}

/// Streams a request body into a private temporary file in the data directory (`<home>/tmp`,
/// mode 0600, created exclusively), refusing it (413) once it passes the upload limit.
async fn body_to_file(st: &State, headers: &HeaderMap, body: Body, suffix: &str) -> ApiResult<tempfile::NamedTempFile> {
    let limit = st.opts.max_upload;
    let declared = headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(ApiError::TooLarge(limit));
    }
    let home = st.config.home.clone();
    let suffix = suffix.to_string();
    let tmp = blocking(move || {
        let dir = tmp_dir(&home).map_err(|e| ApiError::io(&format!("cannot create {}", home.join("tmp").display()), &e))?;
        tempfile::Builder::new()
            .prefix(".body-")
            .suffix(&suffix)
            .tempfile_in(&dir)
            .map_err(|e| ApiError::io(&format!("cannot create a file in {}", dir.display()), &e))
    })
    .await?;
    let what = tmp.path().display().to_string();
    let mut out = tokio::fs::File::from_std(tmp.as_file().try_clone().map_err(|e| ApiError::io(&what, &e))?);
    let mut stream = body.into_data_stream();
    let mut n = 0u64;
    while let Some(piece) = stream.next().await {
        use tokio::io::AsyncWriteExt;
        let piece = piece.map_err(|e| {
            if crate::guard::is_timeout(&e) {
                ApiError::Timeout
            } else {
                ApiError::BadRequest(format!("reading the body failed: {e}"))
            }
        })?;
        n += piece.len() as u64;
        if n > limit {
            return Err(ApiError::TooLarge(limit));
        }
        out.write_all(&piece).await.map_err(|e| ApiError::io(&what, &e))?;
    }
    if n == 0 {
        return Err(ApiError::BadRequest("empty body: send the file's bytes".into()));
    }
    {
        use tokio::io::AsyncWriteExt;
        out.flush().await.map_err(|e| ApiError::io(&what, &e))?;
    }
    Ok(tmp)
}

fn find_job(st: &State, id: &str) -> ApiResult<Arc<Job>> {
    let n = id.parse::<u64>().map_err(|_| ApiError::NotFound(format!("no job '{id}'")))?;
    st.jobs.lock().unwrap_or_else(|e| e.into_inner()).get(&n).cloned().ok_or_else(|| ApiError::NotFound(format!("no job {n}")))
}

async fn job(AxState(st): AxState<State>, UrlPath(id): UrlPath<String>) -> ApiResult<Json<serde_json::Value>> {
    Ok(Json(find_job(&st, &id)?.snapshot()))
}

/// Progress as server-sent events: one `progress` event per finished file, then `done`.
async fn job_events(
    AxState(st): AxState<State>,
    UrlPath(id): UrlPath<String>,
) -> ApiResult<Sse<impl futures_util::Stream<Item = Result<Event, std::convert::Infallible>>>> {
    let job = find_job(&st, &id)?;
    let rx = job.changed.subscribe();
    let stream = futures_util::stream::unfold((job, rx, 0usize, false), |(job, mut rx, sent, finished)| async move {
        if finished {
            return None;
        }
        loop {
            let (next, done, total) = {
                let s = job.state.lock().unwrap_or_else(|e| e.into_inner());
                (s.files.get(sent).cloned(), s.done, job.total.load(std::sync::atomic::Ordering::Relaxed))
            };
            if let Some(f) = next {
                let data = serde_json::json!({ "done_files": sent + 1, "total": total, "file": f });
                return Some((Ok(Event::default().event("progress").data(data.to_string())), (job, rx, sent + 1, false)));
            }
            if done {
                let snap = job.snapshot();
                return Some((Ok(Event::default().event("done").data(snap.to_string())), (job, rx, sent, true)));
            }
            if rx.changed().await.is_err() {
                return None;
            }
        }
    });
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()))
}

async fn models(AxState(st): AxState<State>) -> ApiResult<Json<serde_json::Value>> {
    let statuses = mnema_models::catalog::check(&st.config.models_dir, None, false).map_err(|e| ApiError::Internal(e.to_string()))?;
    Ok(Json(serde_json::json!({ "models_dir": st.config.models_dir, "models": crate::wire::models(statuses, false) })))
}

/// Charges `bytes` of decoded pixels for `what` to the memory budget (waiting a little for
/// memory in use). An image that could not be decoded within the whole budget is the
/// request's fault (400), a budget taken for now a 429.
fn reserve_decode(st: &State, what: &str, bytes: u64) -> ApiResult<mnema_models::manager::Reservation> {
    fits(st, what, bytes)?;
    st.models.reserve_within(what, bytes, std::time::Duration::from_secs(10)).map_err(|e| ApiError::of_kind(e.kind(), e.to_string()))
}

/// Refuses (400) what could not be decoded within the whole memory budget.
fn fits(st: &State, what: &str, bytes: u64) -> ApiResult<()> {
    let budget = st.models.budget();
    if bytes > budget {
        return Err(ApiError::BadRequest(format!(
            "{what} needs {} of memory, more than the memory budget ({}); raise --memory-budget",
            mnema_core::ByteSize(bytes),
            mnema_core::ByteSize(budget)
        )));
    }
    Ok(())
}

async fn ocr_engines(AxState(st): AxState<State>) -> Json<serde_json::Value> {
    Json(serde_json::json!({ "engines": mnema_extract::ocr::engines_in(&mnema_extract::Runtime::from_config(&st.config)) }))
}

#[derive(Deserialize)]
struct OcrParams {
    engines: Option<String>,
    truth: Option<String>,
}

/// Runs OCR engines on one uploaded image; the response streams one JSON line per engine
/// as each finishes (`application/x-ndjson`), so a comparison shows progress.
async fn ocr(AxState(st): AxState<State>, ApiQuery(p): ApiQuery<OcrParams>, headers: HeaderMap, body: Body) -> ApiResult<Response> {
    raw_content_type(&headers)?;
    let permit = heavy_permit(&st)?;
    let tmp = body_to_file(&st, &headers, body, "").await?;
    let limit = st.opts.max_upload;
    let st2 = st.clone();
    // The decoded pixels are charged to the budget before decoding (from the header), and the
    // prepared page for as long as the engines read it.
    let (prepared, page) = blocking(move || {
        let cost = mnema_extract::image::file_decode_cost(tmp.path()).unwrap_or_default();
        // The page for as long as the engines read it, the decoding only while it runs; both
        // are charged before any pixel is decoded.
        let steps = mnema_extract::image::Preprocess::from_setting(&st2.config.ocr_preprocess);
        let page_bytes = cost.page_bytes(steps);
        fits(&st2, "decoding the uploaded image", cost.bytes + page_bytes)?;
        let page = reserve_decode(&st2, "the prepared page", page_bytes)?;
        let decoding = reserve_decode(&st2, "decoding the uploaded image", cost.bytes)?;
        let img = mnema_extract::image::decode_image(tmp.path(), limit).map_err(|e| ApiError::BadRequest(e.to_string()))?;
        let prepared = mnema_extract::image::prepare_for_ocr(&img, steps);
        drop(img);
        drop(decoding);
        Ok::<_, ApiError>((prepared, page))
    })
    .await?;
    let all = mnema_extract::ocr::engines_in(&mnema_extract::Runtime::from_config(&st.config));
    let wanted: Vec<&'static str> = match p.engines.as_deref().unwrap_or("all") {
        "all" => all.iter().filter(|e| e.available).map(|e| e.name).collect(),
        list => {
            let mut v = Vec::new();
            for n in list.split(',') {
                let e = all.iter().find(|e| e.name == n).ok_or_else(|| ApiError::BadRequest(format!("unknown OCR engine '{n}'")))?;
                if !e.available {
                    return Err(ApiError::BadRequest(format!("OCR engine {n} is unavailable: {}", e.reason.clone().unwrap_or_default())));
                }
                v.push(e.name);
            }
            v
        }
    };
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<String, std::convert::Infallible>>(8);
    std::thread::spawn(move || {
        let _permit = permit;
        let _page = page;
        for name in wanted {
            let per = all.iter().find(|e| e.name == name).map_or(80 << 20, |e| e.memory);
            let t0 = Instant::now();
            let r = st
                .models
                .acquire(&format!("ocr:{name}:1"), per, || {
                    mnema_extract::ocr::OcrPool::new(
                        name,
                        &mnema_extract::ocr::EngineOptions::new(&mnema_extract::Runtime::from_config(&st.config)),
                        1,
                    )
                })
                .and_then(|pool| {
                    pool.recognize_all(std::slice::from_ref(&prepared))
                        .pop()
                        .unwrap_or_else(|| Err(mnema_extract::ExtractError::BadInput("no result".into())))
                });
            let elapsed_ms = (t0.elapsed().as_secs_f64() * 1e4).round() / 10.0;
            let o = match r {
                Ok(lines) => {
                    let text = mnema_extract::ocr::join_lines(&lines);
                    let (cer, wer) =
                        p.truth.as_deref().filter(|t| !t.trim().is_empty()).map(|t| mnema_extract::ocr::error_rates(&text, t)).unzip();
                    crate::wire::OcrOut {
                        path: String::new(),
                        engine: name.into(),
                        text,
                        lines,
                        elapsed_ms,
                        peak_rss_mb: crate::wire::peak_rss_mb(),
                        cer,
                        wer,
                        error: None,
                    }
                }
                Err(e) => crate::wire::OcrOut {
                    path: String::new(),
                    engine: name.into(),
                    text: String::new(),
                    lines: vec![],
                    elapsed_ms,
                    peak_rss_mb: crate::wire::peak_rss_mb(),
                    cer: None,
                    wer: None,
                    error: Some(e.to_string()),
                },
            };
            let line = serde_json::to_string(&o).unwrap_or_default() + "\n";
            if tx.blocking_send(Ok(line)).is_err() {
                return;
            }
        }
    });
    let stream = tokio_stream::wrappers::ReceiverStream::new(rx);
    Ok(([(header::CONTENT_TYPE, "application/x-ndjson")], Body::from_stream(stream)).into_response())
}

#[derive(Deserialize)]
struct TranscribeParams {
    language: Option<String>,
    name: Option<String>,
}

/// Transcribes one uploaded recording (same JSON as `mnema --json transcribe`).
async fn transcribe(
    AxState(st): AxState<State>,
    ApiQuery(p): ApiQuery<TranscribeParams>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Json<serde_json::Value>> {
    raw_content_type(&headers)?;
    let permit = heavy_permit(&st)?;
    let t0 = Instant::now();
    // The decoder wants a file (containers seek); the extension only helps it guess. The file
    // is private to this process (created exclusively in the data directory, never /tmp).
    let ext: String = p
        .name
        .as_deref()
        .and_then(|n| n.rsplit_once('.'))
        .map(|(_, e)| e.chars().filter(char::is_ascii_alphanumeric).take(5).collect())
        .unwrap_or_default();
    let tmp = body_to_file(&st, &headers, body, &format!(".{}", if ext.is_empty() { "bin" } else { &ext })).await?;
    blocking(move || {
        let _permit = permit;
        let model = st.config.speech_model.clone();
        let r = (|| {
            let whisper = mnema_ingest::acquire_whisper(&st.config, &st.models, &model)?;
            let vad = mnema_ingest::acquire_vad(&st.config, &st.models)?;
            let opts = mnema_ingest::transcribe_options(p.language.as_deref().unwrap_or(&st.config.languages));
            mnema_ingest::transcribe_file(tmp.path(), &whisper, Some(&vad), &opts, |_, _| {})
        })();
        drop(tmp);
        let elapsed_ms = (t0.elapsed().as_secs_f64() * 1e4).round() / 10.0;
        let name = p.name.unwrap_or_default();
        match r {
            Ok(t) => Ok(Json(
                serde_json::to_value(crate::wire::TranscribeOut {
                    path: name,
                    model,
                    language: Some(t.language.clone()),
                    text: t.text(),
                    segments: t.segments,
                    audio_ms: t.audio_ms,
                    elapsed_ms,
                    error: None,
                })
                .unwrap_or_default(),
            )),
            Err(e) => Err(e.into()),
        }
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_cache_keeps_recent_and_evicts_oldest() {
        let mut c = QueryCache::default();
        for i in 0..QueryCache::CAP {
            c.put(format!("q{i}"), Arc::new(vec![i as f32]));
        }
        assert!(c.get("q0").is_some()); // q0 is now recent; q1 is the oldest
        c.put("new".into(), Arc::new(vec![]));
        assert_eq!(c.map.len(), QueryCache::CAP);
        assert!(c.get("q1").is_none() && c.get("q0").is_some() && c.get("new").is_some());
    }

    #[test]
    fn ranges() {
        assert_eq!(parse_range("bytes=0-99", 1000), Range::Part(0, 99));
        assert_eq!(parse_range("bytes=900-", 1000), Range::Part(900, 999));
        assert_eq!(parse_range("bytes=-100", 1000), Range::Part(900, 999));
        assert_eq!(parse_range("bytes=-5000", 1000), Range::Part(0, 999));
        assert_eq!(parse_range("bytes=500-5000", 1000), Range::Part(500, 999));
        assert_eq!(parse_range("bytes=1000-", 1000), Range::Outside);
        assert_eq!(parse_range("bytes=5000-6000", 1000), Range::Outside);
        assert_eq!(parse_range("bytes=-0", 1000), Range::Outside);
        assert_eq!(parse_range("bytes=0-", 0), Range::Outside);
        assert_eq!(parse_range("items=0-1", 1000), Range::Whole);
        assert_eq!(parse_range("bytes=9-1", 1000), Range::Whole);
        assert_eq!(parse_range("bytes=x-1", 1000), Range::Whole);
    }
}
