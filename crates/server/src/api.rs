//! The JSON API: routes, the token check, the one error → status mapping, and ingest jobs
//! with progress streamed as server-sent events.

use crate::wire::{ChunkOut, HitOut, IngestOut, ItemOut, SearchOut, ShowOut};
use crate::ServeOptions;
use axum::body::Body;
use axum::extract::{DefaultBodyLimit, Path as UrlPath, Query, Request, State as AxState};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use mnema_core::{Config, Filters, Kind, SearchMode};
use mnema_models::manager::ModelManager;
use mnema_store::Store;
use serde::Deserialize;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// Shared by all requests.
pub(crate) struct Inner {
    config: Config,
    models: Arc<ModelManager>,
    /// One connection for reads and deletes; ingest jobs open their own (SQLite WAL lets
    /// readers go on while a job writes).
    store: Mutex<Store>,
    opts: ServeOptions,
    jobs: Mutex<HashMap<u64, Arc<Job>>>,
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

pub(crate) fn new_state(config: Config, models: Arc<ModelManager>, store: Store, opts: ServeOptions) -> State {
    Arc::new(Inner {
        config,
        models,
        store: Mutex::new(store),
        opts,
        jobs: Mutex::new(HashMap::new()),
        next_job: 1.into(),
        started: Instant::now(),
        query_vectors: Mutex::default(),
        history: Default::default(),
    })
}

/// Every API failure, mapped to a status here and nowhere else.
#[derive(Debug)]
pub(crate) enum ApiError {
    BadRequest(String),
    Unauthorized,
    NotFound(String),
    TooLarge(u64),
    Busy(String),
    Internal(String),
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, msg) = match self {
            ApiError::BadRequest(m) => (StatusCode::BAD_REQUEST, m),
            ApiError::Unauthorized => (StatusCode::UNAUTHORIZED, "missing or wrong token (send `Authorization: Bearer TOKEN`)".into()),
            ApiError::NotFound(m) => (StatusCode::NOT_FOUND, m),
            ApiError::TooLarge(limit) => {
                (StatusCode::PAYLOAD_TOO_LARGE, format!("upload larger than the limit of {}", mnema_core::ByteSize(limit)))
            }
            ApiError::Busy(m) => (StatusCode::TOO_MANY_REQUESTS, m),
            ApiError::Internal(m) => (StatusCode::INTERNAL_SERVER_ERROR, m),
        };
        (status, Json(serde_json::json!({ "error": msg }))).into_response()
    }
}

impl From<mnema_store::StoreError> for ApiError {
    fn from(e: mnema_store::StoreError) -> Self {
        ApiError::Internal(e.to_string())
    }
}

impl From<mnema_search::SearchError> for ApiError {
    fn from(e: mnema_search::SearchError) -> Self {
        ApiError::Internal(e.to_string())
    }
}

impl From<mnema_extract::ExtractError> for ApiError {
    fn from(e: mnema_extract::ExtractError) -> Self {
        match e {
            mnema_extract::ExtractError::Model(
                mnema_models::ModelError::OverBudget { .. } | mnema_models::ModelError::LowMemory { .. },
            ) => ApiError::Busy(e.to_string()),
            other => ApiError::Internal(other.to_string()),
        }
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

pub(crate) fn router(state: State) -> Router {
    let limit = state.opts.max_upload as usize;
    Router::new()
        .route("/api/health", get(health))
        .route("/api/search", get(search))
        .route("/api/items/{id}", get(item).delete(delete_item))
        .route("/api/files/{id}", get(file))
        .route("/api/status", get(status))
        .route("/api/openapi.json", get(openapi))
        .route("/api/ingest", post(ingest))
        .route("/api/upload", post(upload).layer(DefaultBodyLimit::max(limit)))
        .route("/api/ocr", post(ocr).layer(DefaultBodyLimit::max(limit)))
        .route("/api/ocr/engines", get(ocr_engines))
        .route("/api/transcribe", post(transcribe).layer(DefaultBodyLimit::max(limit)))
        .route("/api/models", get(models))
        .route("/api/jobs/{id}", get(job))
        .route("/api/jobs/{id}/events", get(job_events))
        .fallback(|| async { ApiError::NotFound("no such route".into()) })
        .layer(axum::middleware::from_fn_with_state(state.clone(), auth))
        .with_state(state)
}

/// With a token configured, every request must carry it: `Authorization: Bearer T`, a
/// `token` query parameter (sets a cookie for the UI), or the `mnema_token` cookie.
async fn auth(AxState(st): AxState<State>, req: Request, next: Next) -> Response {
    let Some(token) = st.opts.token.as_deref().filter(|t| !t.is_empty()) else {
        return next.run(req).await;
    };
    let h = req.headers();
    let bearer = h.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer ")).map(str::to_string);
    let cookie = h
        .get(header::COOKIE)
        .and_then(|v| v.to_str().ok())
        .and_then(|c| c.split(';').find_map(|kv| kv.trim().strip_prefix("mnema_token=").map(str::to_string)));
    let query = req.uri().query().and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("token=").map(str::to_string)));
    let ok = [&bearer, &cookie, &query].iter().any(|t| t.as_deref() == Some(token));
    if !ok {
        return ApiError::Unauthorized.into_response();
    }
    let mut resp = next.run(req).await;
    if query.is_some() {
        if let Ok(v) = HeaderValue::from_str(&format!("mnema_token={token}; Path=/; HttpOnly; SameSite=Strict")) {
            resp.headers_mut().insert(header::SET_COOKIE, v);
        }
    }
    resp
}

async fn health(AxState(st): AxState<State>) -> ApiResult<Json<serde_json::Value>> {
    let st2 = st.clone();
    let items = blocking(move || Ok(st2.store.lock().unwrap_or_else(|e| e.into_inner()).stats()?.items)).await?;
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

async fn search(AxState(st): AxState<State>, Query(p): Query<SearchParams>) -> ApiResult<Json<serde_json::Value>> {
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
        let name = st.store.lock().unwrap_or_else(|e| e.into_inner()).embedder()?.map(|e| e.0);
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
        let mut store = st.store.lock().unwrap_or_else(|e| e.into_inner());
        Ok(mnema_search::search_with_vector(&mut store, vector.as_deref().map(|v| v.as_slice()), &q)?)
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
        let store = st.store.lock().unwrap_or_else(|e| e.into_inner());
        let item = store.item(id)?.ok_or_else(|| ApiError::NotFound(format!("no item with id {id}")))?;
        let chunks: Vec<ChunkOut> = store.chunks(id)?.into_iter().map(|(c, _)| c.into()).collect();
        Ok(Json(serde_json::to_value(ShowOut { item: ItemOut::from(item), chunks }).map_err(|e| ApiError::Internal(e.to_string()))?))
    })
    .await
}

async fn delete_item(AxState(st): AxState<State>, UrlPath(id): UrlPath<String>) -> ApiResult<Json<serde_json::Value>> {
    let id = parse_id(&id)?;
    blocking(move || {
        let mut store = st.store.lock().unwrap_or_else(|e| e.into_inner());
        let item = store.item(id)?.ok_or_else(|| ApiError::NotFound(format!("no item with id {id}")))?;
        let deleted = store.delete_item(id)?;
        Ok(Json(serde_json::json!({ "id": id, "deleted": deleted, "path": item.path })))
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
    Query(p): Query<FileParams>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let id = parse_id(&id)?;
    let thumb = p.thumb.as_deref().is_some_and(|t| t == "1" || t == "true");
    let range = headers.get(header::RANGE).and_then(|v| v.to_str().ok()).map(str::to_string);
    blocking(move || {
        let item = st
            .store
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .item(id)?
            .ok_or_else(|| ApiError::NotFound(format!("no item with id {id}")))?;
        let path = std::path::PathBuf::from(&item.path);
        let gone = || ApiError::NotFound(format!("file of item {id} is gone: {}", item.path));
        let total = std::fs::metadata(&path).map_err(|_| gone())?.len();
        if thumb {
            if item.kind != Kind::Image {
                return Err(ApiError::BadRequest(format!("item {id} is not an image")));
            }
            let img = mnema_extract::image::decode_image(&path, 256 << 20).map_err(|e| ApiError::Internal(e.to_string()))?;
            let t = img.thumbnail(320, 320);
            let mut out = std::io::Cursor::new(Vec::new());
            t.write_to(&mut out, image::ImageFormat::Png).map_err(|e| ApiError::Internal(e.to_string()))?;
            return Ok(([(header::CONTENT_TYPE, "image/png"), (header::CACHE_CONTROL, "max-age=3600")], out.into_inner()).into_response());
        }
        let ct = content_type(&path);
        if let Some((a, b)) = range.as_deref().and_then(|r| parse_range(r, total)) {
            // Only the asked-for bytes are read: a player seeking in a long recording asks
            // for many small ranges.
            use std::os::unix::fs::FileExt;
            let mut body = vec![0u8; (b - a + 1) as usize];
            std::fs::File::open(&path).and_then(|f| f.read_exact_at(&mut body, a)).map_err(|_| gone())?;
            let mut resp = Response::new(Body::from(body));
            *resp.status_mut() = StatusCode::PARTIAL_CONTENT;
            let h = resp.headers_mut();
            h.insert(header::CONTENT_TYPE, HeaderValue::from_static(ct));
            h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
            if let Ok(v) = HeaderValue::from_str(&format!("bytes {a}-{b}/{total}")) {
                h.insert(header::CONTENT_RANGE, v);
            }
            return Ok(resp);
        }
        let bytes = std::fs::read(&path).map_err(|_| gone())?;
        Ok(([(header::CONTENT_TYPE, ct), (header::ACCEPT_RANGES, "bytes")], bytes).into_response())
    })
    .await
}

/// `bytes=a-b`, `bytes=a-`, `bytes=-n` → inclusive range within `total`.
fn parse_range(r: &str, total: u64) -> Option<(u64, u64)> {
    let spec = r.strip_prefix("bytes=")?.split(',').next()?.trim();
    let (a, b) = spec.split_once('-')?;
    if total == 0 {
        return None;
    }
    let (start, end) = match (a.parse::<u64>().ok(), b.parse::<u64>().ok()) {
        (Some(a), Some(b)) => (a, b.min(total - 1)),
        (Some(a), None) => (a, total - 1),
        (None, Some(n)) => (total.saturating_sub(n), total - 1),
        (None, None) => return None,
    };
    (start <= end && start < total).then_some((start, end))
}

async fn status(AxState(st): AxState<State>) -> ApiResult<Json<serde_json::Value>> {
    blocking(move || {
        let store = st.store.lock().unwrap_or_else(|e| e.into_inner());
        let mut v = crate::wire::status(&st.config, st.opts.budget, &st.models, &store)?;
        let jobs: Vec<serde_json::Value> = st.jobs.lock().unwrap_or_else(|e| e.into_inner()).values().map(|j| j.snapshot()).collect();
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
    done: bool,
    error: Option<String>,
}

impl Job {
    fn snapshot(&self) -> serde_json::Value {
        let s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let failed = s.files.iter().filter(|f| f["status"] == "failed").count();
        serde_json::json!({ "id": self.id, "total": self.total.load(std::sync::atomic::Ordering::Relaxed), "done_files": s.files.len(), "failed": failed, "done": s.done, "error": s.error, "files": s.files })
    }
}

#[derive(Deserialize)]
struct IngestBody {
    paths: Vec<String>,
}

async fn ingest(
    AxState(st): AxState<State>,
    body: Result<Json<IngestBody>, axum::extract::rejection::JsonRejection>,
) -> ApiResult<Response> {
    let Json(body) = body.map_err(|e| ApiError::BadRequest(format!("expected JSON {{\"paths\": [...]}}: {}", e.body_text())))?;
    if body.paths.is_empty() {
        return Err(ApiError::BadRequest("paths is empty".into()));
    }
    let job = start_job(&st, body.paths.into_iter().map(std::path::PathBuf::from).collect());
    Ok((StatusCode::ACCEPTED, Json(serde_json::json!({ "job": job, "events": format!("/api/jobs/{job}/events") }))).into_response())
}

fn start_job(st: &State, paths: Vec<std::path::PathBuf>) -> u64 {
    let id = st.next_job.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let (tx, _) = tokio::sync::watch::channel(0);
    let job = Arc::new(Job { id, total: 0.into(), state: Mutex::new(JobState::default()), changed: tx });
    st.jobs.lock().unwrap_or_else(|e| e.into_inner()).insert(id, job.clone());
    let st = st.clone();
    std::thread::spawn(move || {
        let run = || -> Result<(), String> {
            let (files, missing) = mnema_ingest::collect(&paths);
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
            let mut store = Store::open(&st.config.home).map_err(|e| e.to_string())?;
            mnema_ingest::Ingester::new(&st.config, &mut store, &st.models).run(&files, push).map_err(|e| e.to_string())?;
            Ok(())
        };
        let r = run();
        let mut s = job.state.lock().unwrap_or_else(|e| e.into_inner());
        s.done = true;
        s.error = r.err();
        let n = s.files.len();
        drop(s);
        let _ = job.changed.send(n + 1);
    });
    id
}

/// Upload a file (raw body, `?name=FILE`): saved under `<home>/uploads/` and ingested.
#[derive(Deserialize)]
struct UploadParams {
    name: Option<String>,
}

async fn upload(
    AxState(st): AxState<State>,
    Query(p): Query<UploadParams>,
    body: Result<axum::body::Bytes, axum::extract::rejection::BytesRejection>,
) -> ApiResult<Response> {
    let body = body_or_413(&st, body)?;
    let name = p.name.unwrap_or_default();
    // Only a plain file name: no directories, no traversal.
    let clean: String = name.chars().filter(|c| !matches!(c, '/' | '\\' | '\0')).collect();
    if clean.is_empty() || clean.starts_with('.') || clean != name {
        return Err(ApiError::BadRequest(format!("bad file name '{name}' (a plain name like memo.m4a)")));
    }
    let dir = st.config.home.join("uploads");
    let path = dir.join(&clean);
    blocking({
        let path = path.clone();
        move || {
            std::fs::create_dir_all(&dir).map_err(|e| ApiError::Internal(e.to_string()))?;
            std::fs::write(&path, &body).map_err(|e| ApiError::Internal(e.to_string()))
        }
    })
    .await?;
    let job = start_job(&st, vec![path.clone()]);
    Ok((StatusCode::ACCEPTED, Json(serde_json::json!({ "job": job, "path": path, "events": format!("/api/jobs/{job}/events") })))
        .into_response())
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

async fn ocr_engines(AxState(st): AxState<State>) -> Json<serde_json::Value> {
    Json(serde_json::json!({ "engines": mnema_extract::ocr::engines_in(&st.config.models_dir) }))
}

fn body_or_413(st: &State, body: Result<axum::body::Bytes, axum::extract::rejection::BytesRejection>) -> ApiResult<axum::body::Bytes> {
    let b = body.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::TooLarge(st.opts.max_upload)
        } else {
            ApiError::BadRequest(e.body_text())
        }
    })?;
    if b.is_empty() {
        return Err(ApiError::BadRequest("empty body: send the file's bytes".into()));
    }
    Ok(b)
}

#[derive(Deserialize)]
struct OcrParams {
    engines: Option<String>,
    truth: Option<String>,
}

/// Runs OCR engines on one uploaded image; the response streams one JSON line per engine
/// as each finishes (`application/x-ndjson`), so a comparison shows progress.
async fn ocr(
    AxState(st): AxState<State>,
    Query(p): Query<OcrParams>,
    body: Result<axum::body::Bytes, axum::extract::rejection::BytesRejection>,
) -> ApiResult<Response> {
    let bytes = body_or_413(&st, body)?;
    let img = mnema_extract::image::decode_bytes(&bytes, "").map_err(|e| ApiError::BadRequest(e.to_string()))?;
    let prepared = mnema_extract::image::prepare_for_ocr(&img);
    let all = mnema_extract::ocr::engines_in(&st.config.models_dir);
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
        for name in wanted {
            let per = all.iter().find(|e| e.name == name).map_or(80 << 20, |e| e.memory);
            let t0 = Instant::now();
            let r = st
                .models
                .acquire(&format!("ocr:{name}:1"), per, || {
                    mnema_extract::ocr::OcrPool::new(name, &mnema_extract::ocr::EngineOptions::with_models(&st.config.models_dir), 1)
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
    Query(p): Query<TranscribeParams>,
    body: Result<axum::body::Bytes, axum::extract::rejection::BytesRejection>,
) -> ApiResult<Json<serde_json::Value>> {
    let bytes = body_or_413(&st, body)?;
    blocking(move || {
        let t0 = Instant::now();
        // The decoder wants a file (containers seek); the extension only helps it guess.
        let ext: String = p
            .name
            .as_deref()
            .and_then(|n| n.rsplit_once('.'))
            .map(|(_, e)| e.chars().filter(char::is_ascii_alphanumeric).take(5).collect())
            .unwrap_or_default();
        let tmp = std::env::temp_dir().join(format!(
            "mnema-upload-{}-{}.{}",
            std::process::id(),
            t0.elapsed().as_nanos() ^ bytes.len() as u128,
            if ext.is_empty() { "bin" } else { &ext }
        ));
        std::fs::write(&tmp, &bytes).map_err(|e| ApiError::Internal(e.to_string()))?;
        let model = st.config.speech_model.clone();
        let r = (|| {
            let whisper = mnema_ingest::acquire_whisper(&st.config, &st.models, &model)?;
            let vad = mnema_ingest::acquire_vad(&st.config, &st.models)?;
            let opts = mnema_ingest::transcribe_options(p.language.as_deref().unwrap_or(&st.config.languages));
            mnema_ingest::transcribe_file(&tmp, &whisper, Some(&vad), &opts, |_, _| {})
        })();
        let _ = std::fs::remove_file(&tmp);
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
            Err(mnema_extract::ExtractError::BadInput(e)) => Err(ApiError::BadRequest(e)),
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
        assert_eq!(parse_range("bytes=0-99", 1000), Some((0, 99)));
        assert_eq!(parse_range("bytes=900-", 1000), Some((900, 999)));
        assert_eq!(parse_range("bytes=-100", 1000), Some((900, 999)));
        assert_eq!(parse_range("bytes=500-5000", 1000), Some((500, 999)));
        assert_eq!(parse_range("bytes=1000-", 1000), None);
        assert_eq!(parse_range("items=0-1", 1000), None);
    }
}
