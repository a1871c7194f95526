//! `mnema serve`: the HTTP API under `/api/` (the CLI's JSON shapes, documented as OpenAPI at
//! `/api/openapi.json`) and the web UI at `/`, over axum.
//!
//! **Architecture Invariant:** only this crate knows HTTP; errors become JSON
//! `{"error": …}` with a status in one place ([`ApiError`]). Files are served only by item id,
//! from the path the store recorded, so nothing outside the data directory and the ingested
//! files is ever reachable.
#![deny(missing_docs)]

// The contract's fields are documented in README ("JSON contract").
mod api;
mod guard;
mod history;
mod net;
mod ui;
#[allow(missing_docs)]
pub mod wire;

use mnema_core::Config;
use mnema_models::manager::ModelManager;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

/// Errors that stop the server from starting.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// Listening on a non-loopback address needs a token.
    #[error("refusing to listen on {0} without a token: set MNEMA_TOKEN (clients send it as `Authorization: Bearer TOKEN`)")]
    NeedsToken(SocketAddr),
    /// The token is too short to be a secret.
    #[error("MNEMA_TOKEN is {0} characters long: use at least 16 (e.g. `openssl rand -hex 16`)")]
    WeakToken(usize),
    /// The token holds a character a cookie cannot carry.
    #[error("MNEMA_TOKEN may hold only letters, digits and the printable ASCII signs other than ; , \" and \\ (it travels in a cookie)")]
    TokenCharacters,
    /// An allowed folder cannot be used.
    #[error("--allow-path {path}: {source}")]
    AllowPath {
        /// The folder as given.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The store could not be opened.
    #[error(transparent)]
    Store(#[from] mnema_store::StoreError),
    /// The runtime failed.
    #[error("server failed: {0}")]
    Io(#[from] std::io::Error),
}

/// How to serve.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// Address to listen on (default 127.0.0.1:8501).
    pub addr: SocketAddr,
    /// Required token (`MNEMA_TOKEN`); mandatory when `addr` is not loopback.
    pub token: Option<String>,
    /// Largest upload accepted, bytes.
    pub max_upload: u64,
    /// The process's whole memory budget (for status).
    pub budget: u64,
    /// Files and folders `POST /api/ingest` may read (`--allow-path`), besides those already
    /// ingested from the command line and the uploads folder.
    pub allow: Vec<PathBuf>,
}

/// Runs the server until Ctrl-C / SIGTERM. `ready` is called with the bound address.
pub fn serve(config: Config, models: Arc<ModelManager>, mut opts: ServeOptions, ready: impl FnOnce(SocketAddr)) -> Result<(), ServerError> {
    if !opts.addr.ip().is_loopback() && opts.token.as_deref().is_none_or(str::is_empty) {
        return Err(ServerError::NeedsToken(opts.addr));
    }
    if let Some(n) = opts.token.as_deref().map(|t| t.chars().count()).filter(|n| *n < guard::MIN_TOKEN_CHARS) {
        return Err(ServerError::WeakToken(n));
    }
    if opts.token.as_deref().is_some_and(|t| !t.bytes().all(|b| b.is_ascii_graphic() && !matches!(b, b';' | b',' | b'"' | b'\\'))) {
        return Err(ServerError::TokenCharacters);
    }
    for p in &mut opts.allow {
        *p = p.canonicalize().map_err(|source| ServerError::AllowPath { path: p.clone(), source })?;
    }
    let store: Box<dyn mnema_store::Store> = Box::new(mnema_store::SqliteStore::open(&config.home)?);
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(opts.addr).await.map_err(|source| ServerError::Bind { addr: opts.addr, source })?;
        let addr = listener.local_addr()?;
        let state = api::new_state(config, models, store, opts.clone(), addr);
        api::start_history(&state);
        let app = api::app(state);
        ready(addr);
        net::run(listener, app, shutdown()).await;
        Ok(())
    })
}

async fn shutdown() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(t) => t,
            Err(_) => return std::future::pending().await,
        };
        tokio::select! {
            _ = ctrl_c => {},
            _ = term.recv() => {},
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
