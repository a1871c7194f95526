//! The web UI: one page (HTML, CSS and script embedded in the binary, nothing fetched from a
//! network) that talks to the JSON API. Views: search as you type, an item (the screenshot
//! with its matching OCR lines highlighted, a voice memo playing from the hit's second beside
//! its transcript, a note), ingest with live progress, and resources (the model manager).

use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;

pub(crate) fn router<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new().route("/", get(index)).route("/favicon.ico", get(|| async { axum::http::StatusCode::NO_CONTENT }))
}

async fn index() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/html; charset=utf-8"), (header::CACHE_CONTROL, "no-cache")], include_str!("assets/index.html"))
}
