//! `mnema serve [--addr HOST:PORT] [--allow-path DIR]...`: the web UI and the JSON API.

use super::Ctx;
use crate::exit;
use anyhow::Result;
use std::net::SocketAddr;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Address to listen on. Anything but loopback requires MNEMA_TOKEN.
    #[arg(long, default_value = "127.0.0.1:8501", value_name = "HOST:PORT")]
    addr: SocketAddr,
    /// Largest upload accepted (e.g. 512MiB).
    #[arg(long, default_value = "512MiB", value_name = "SIZE")]
    max_upload: mnema_core::ByteSize,
    /// A folder (or file) the API may ingest from (`POST /api/ingest`); repeatable. Paths
    /// ingested with `mnema ingest` and the uploads folder are always allowed.
    #[arg(long = "allow-path", value_name = "DIR")]
    allow_path: Vec<std::path::PathBuf>,
}

pub fn run(ctx: &Ctx, a: Args) -> Result<u8> {
    let token = std::env::var("MNEMA_TOKEN").ok().filter(|t| !t.is_empty());
    let opts = mnema_server::ServeOptions { addr: a.addr, token, max_upload: a.max_upload.0, budget: ctx.budget.0, allow: a.allow_path };
    mnema_server::serve(ctx.config.clone(), ctx.models.clone(), opts, |addr| {
        eprintln!("mnema: serving http://{addr}/ (data in {}); Ctrl-C stops", ctx.config.home.display());
    })?;
    Ok(exit::OK)
}
