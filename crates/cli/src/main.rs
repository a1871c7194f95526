//! `mnema`: the command-line front end. Parses flags, resolves the configuration once,
//! dispatches to a command, and prints errors once at the top as `mnema: <reason>`.
//!
//! **Architecture Invariant:** only this crate prints to stdout; the JSON shapes of the
//! contract live in `mnema-server`'s `wire.rs`, shared by the CLI and the HTTP API.

mod cmd;

use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

/// Exit codes (documented in README). Errors get theirs from their kind, in [`exit::for_kind`]
/// and nowhere else.
pub mod exit {
    use mnema_core::ErrorKind;

    /// Everything worked.
    pub const OK: u8 = 0;
    /// Partly failed: some files were not ingested, or doctor found a required piece missing.
    pub const PARTIAL: u8 = 1;
    /// The command failed for a reason the user can act on: bad arguments or settings,
    /// missing or corrupt model files, an engine this machine lacks, the memory budget or
    /// the disk full, an unusable data directory.
    pub const ERROR: u8 = 2;
    /// The item asked for does not exist.
    pub const NOT_FOUND: u8 = 3;
    /// An internal failure the input does not explain (an engine or runtime failed while
    /// running): worth a bug report with the message.
    pub const INTERNAL: u8 = 4;

    /// The exit code of a failed command.
    pub fn for_kind(kind: ErrorKind) -> u8 {
        match kind {
            ErrorKind::Input | ErrorKind::Unavailable | ErrorKind::ModelFile | ErrorKind::Busy | ErrorKind::DiskFull => ERROR,
            ErrorKind::Internal => INTERNAL,
        }
    }
}

/// mnema — a local second memory: find your notes, screenshots and voice memos by
/// meaning or by words, in Russian or English. Everything stays on this machine.
#[derive(Parser, Debug)]
#[command(name = "mnema", version, about, long_about = None, propagate_version = true)]
#[command(
    after_help = "Examples:\n  mnema ingest ~/notes\n  mnema search \"как приготовить борщ\"\n  mnema --json search \"beet soup recipe\" --limit 5\n  mnema doctor"
)]
pub struct Cli {
    /// Data directory (database, vector index). Default: $MNEMA_HOME, else $XDG_DATA_HOME/mnema.
    #[arg(long, global = true, value_name = "DIR")]
    home: Option<PathBuf>,
    /// Directory with model files. Default: $MNEMA_MODELS, else <home>/models or ./models.
    #[arg(long, global = true, value_name = "DIR")]
    models: Option<PathBuf>,
    /// Machine-readable output: JSON on stdout (one object, or one per line for streams).
    #[arg(long, global = true)]
    json: bool,
    /// Memory the process may use, models included (e.g. 512MiB, 2GiB). Models are loaded
    /// only when they fit, evicting idle ones first. Default: a quarter of RAM, at least 512 MiB.
    #[arg(long, global = true, env = "MNEMA_MEMORY_BUDGET", value_name = "SIZE")]
    memory_budget: Option<mnema_core::ByteSize>,
    /// Log more (repeat for debug); logs go to stderr.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Index files and folders (notes, images, audio); unchanged files are skipped.
    Ingest(cmd::ingest::Args),
    /// Search by meaning and by words (hybrid by default).
    Search(cmd::search::Args),
    /// Show a stored item and its chunks.
    Show(cmd::items::ShowArgs),
    /// Delete an item and everything derived from it.
    Delete(cmd::items::DeleteArgs),
    /// Read the text in images with an OCR engine, or compare engines side by side.
    Ocr(cmd::ocr::Args),
    /// Transcribe voice memos and recordings (Whisper), with timestamps.
    Transcribe(cmd::transcribe::Args),
    /// Serve the web UI and the JSON API (default http://127.0.0.1:8501/).
    Serve(cmd::serve::Args),
    /// Print embedding vectors for texts (for checks and scripting).
    Embed(cmd::embed::Args),
    /// List, fetch and verify model files.
    Models(cmd::models::Args),
    /// Check the installation: models, packages, data directory, memory budget, CPU.
    Doctor,
    /// Show the memory budget, loaded models, machine memory and store size.
    Status,
    /// Run another mnema command in-process and report time, CPU, memory and swap per stage.
    Profile(cmd::profile::Args),
}

fn main() -> ExitCode {
    // Everything mnema creates (database, index, uploads, temporary files) is private to
    // the user: 0700 directories, 0600 files.
    #[cfg(unix)]
    // SAFETY: umask only sets the process's file mode creation mask; it cannot fail.
    unsafe {
        libc::umask(0o077);
    }
    // Tesseract's OpenMP threads busy-wait: on few cores OCR runs 5-6× slower with them.
    // mnema parallelises across images instead. libgomp reads its settings when it is loaded,
    // before `main`, so setting the variable here would be too late: the process re-executes
    // itself once with it set (a millisecond).
    #[cfg(unix)]
    if std::env::var_os("OMP_THREAD_LIMIT").is_none() {
        use std::os::unix::process::CommandExt;
        if let Ok(exe) = std::env::current_exe() {
            let err = std::process::Command::new(exe).args(std::env::args_os().skip(1)).env("OMP_THREAD_LIMIT", "1").exec();
            tracing::debug!("re-exec with OMP_THREAD_LIMIT=1 failed: {err}");
        }
    }
    mnema_models::use_few_malloc_arenas(std::thread::available_parallelism().map_or(1, |n| n.get()));
    let cli = Cli::parse();
    let filter = match cli.verbose {
        // Decoder and runtime libraries log every damaged packet or failed session at error
        // level, without naming the file (symphonia: ~30 lines for one corrupt recording).
        // The failure reaches the user once, as mnema's own line naming the file; their logs
        // show with -v.
        0 => "warn,symphonia=off,ort=off",
        1 => "info",
        _ => "debug",
    };
    let env_filter = match std::env::var("MNEMA_LOG") {
        Ok(v) if !v.trim().is_empty() => match tracing_subscriber::EnvFilter::try_new(&v) {
            Ok(f) => f,
            Err(_) => {
                eprintln!("mnema: MNEMA_LOG={v:?} is not valid: expected a log filter such as warn, info, debug or mnema_ingest=debug");
                return ExitCode::from(exit::ERROR);
            }
        },
        _ => filter.into(),
    };
    tracing_subscriber::fmt().with_env_filter(env_filter).with_writer(std::io::stderr).with_target(false).without_time().init();
    let result = cmd::Ctx::new(&cli).and_then(|ctx| dispatch(&ctx, cli.command));
    match result {
        Ok(code) => ExitCode::from(code),
        Err(e) if is_broken_pipe(&e) => ExitCode::from(exit::OK),
        Err(e) => {
            eprintln!("mnema: {}", one_line(&e));
            ExitCode::from(exit::for_kind(kind_of(&e)))
        }
    }
}

/// The kind of a command's failure: the first error in the chain that knows its kind, except
/// that a full disk anywhere in the chain is a full disk. Errors of no known type (argument
/// checks in the commands) are the user's input.
fn kind_of(e: &anyhow::Error) -> mnema_core::ErrorKind {
    use mnema_core::ErrorKind as K;
    let kinds: Vec<K> = e.chain().filter_map(known_kind).collect();
    if kinds.contains(&K::DiskFull) {
        return K::DiskFull;
    }
    kinds.first().copied().unwrap_or(K::Input)
}

/// The kind of one error in a chain, when its type is known.
fn known_kind(e: &(dyn std::error::Error + 'static)) -> Option<mnema_core::ErrorKind> {
    use mnema_core::ErrorKind as K;
    if let Some(e) = e.downcast_ref::<mnema_core::config::ConfigError>() {
        return Some(e.kind());
    }
    if let Some(e) = e.downcast_ref::<mnema_extract::ExtractError>() {
        return Some(e.kind());
    }
    if let Some(e) = e.downcast_ref::<mnema_engine::EngineError>() {
        return Some(e.kind());
    }
    if let Some(e) = e.downcast_ref::<mnema_models::ModelError>() {
        return Some(e.kind());
    }
    if let Some(e) = e.downcast_ref::<mnema_ingest::IngestError>() {
        return Some(e.kind());
    }
    if let Some(e) = e.downcast_ref::<mnema_search::SearchError>() {
        return Some(e.kind());
    }
    if let Some(e) = e.downcast_ref::<mnema_store::StoreError>() {
        return Some(e.kind());
    }
    if let Some(e) = e.downcast_ref::<std::io::Error>() {
        return mnema_core::error::is_disk_full(e).then_some(K::DiskFull);
    }
    None
}

/// Runs one command.
fn dispatch(ctx: &cmd::Ctx, command: Command) -> anyhow::Result<u8> {
    match command {
        Command::Ingest(a) => cmd::ingest::run(ctx, a),
        Command::Search(a) => cmd::search::run(ctx, a),
        Command::Show(a) => cmd::items::show(ctx, a),
        Command::Delete(a) => cmd::items::delete(ctx, a),
        Command::Embed(a) => cmd::embed::run(ctx, a),
        Command::Ocr(a) => cmd::ocr::run(ctx, a),
        Command::Transcribe(a) => cmd::transcribe::run(ctx, a),
        Command::Serve(a) => cmd::serve::run(ctx, a),
        Command::Models(a) => cmd::models::run(ctx, a),
        Command::Doctor => cmd::doctor::run(ctx),
        Command::Status => cmd::status::run(ctx),
        Command::Profile(a) => cmd::profile::run(ctx, a),
    }
}

/// The error and its causes on one line: `outer: inner: root`.
fn one_line(e: &anyhow::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    for c in e.chain() {
        let s = c.to_string();
        if !parts.iter().any(|p| p.contains(&s)) {
            parts.push(s);
        }
    }
    parts.join(": ").replace('\n', " ")
}

fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| c.downcast_ref::<std::io::Error>().is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe))
}
