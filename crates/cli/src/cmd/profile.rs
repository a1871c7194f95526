//! `mnema profile -- <command>`: runs a mnema command in this process and reports, per
//! stage (decode, ocr, asr, embed, store, search, load-model): wall and CPU time, peak RSS,
//! RSS and swap change, time stalled on memory (Linux PSI), and the model loads and unloads.
//!
//! Peak RSS per stage comes from a sampler thread reading /proc every 2 ms, plus the
//! readings at the stage's edges.

use super::{out_json, Ctx};
use crate::Cli;
use anyhow::Result;
use clap::Parser;
use mnema_core::profile::Observer;
use mnema_models::manager::{process_rss, status_kb, Event};
use serde::Serialize;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// The mnema command to profile, after `--` (e.g. `-- ingest ~/notes`).
    #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true, value_name = "COMMAND")]
    command: Vec<String>,
}

/// Process CPU time (all threads).
pub fn cpu_time() -> Duration {
    #[repr(C)]
    struct Timespec {
        sec: i64,
        nsec: i64,
    }
    unsafe extern "C" {
        fn clock_gettime(clock: i32, ts: *mut Timespec) -> i32;
    }
    const CLOCK_PROCESS_CPUTIME_ID: i32 = 2;
    let mut ts = Timespec { sec: 0, nsec: 0 };
    // SAFETY: ts is a valid timespec for the call to fill.
    let ok = unsafe { clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &mut ts) } == 0;
    if ok {
        Duration::new(ts.sec as u64, ts.nsec as u32)
    } else {
        Duration::ZERO
    }
}

/// Microseconds some task stalled on memory since boot (`/proc/pressure/memory`), if known.
fn psi_stall_us() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/pressure/memory").ok()?;
    s.lines().find(|l| l.starts_with("some"))?.split_whitespace().find_map(|kv| kv.strip_prefix("total=")).and_then(|v| v.parse().ok())
}

struct Open {
    name: &'static str,
    t0: Instant,
    cpu0: Duration,
    rss0: u64,
    swap0: u64,
    psi0: Option<u64>,
    peak: Arc<AtomicU64>,
}

/// Totals of one stage name.
#[derive(Debug, Clone, Default, Serialize)]
pub struct StageStats {
    pub stage: &'static str,
    pub calls: u64,
    pub wall_ms: f64,
    pub cpu_ms: f64,
    pub peak_rss_bytes: u64,
    pub rss_delta_bytes: i64,
    pub swap_delta_bytes: i64,
    pub memory_stall_ms: Option<f64>,
}

/// The observer `mnema profile` installs.
pub struct Recorder {
    open: Mutex<Vec<Open>>,
    stats: Mutex<BTreeMap<&'static str, StageStats>>,
    sampling: Mutex<Vec<Arc<AtomicU64>>>,
}

impl Recorder {
    /// The process-wide recorder, created and installed on first use, with its sampler.
    pub fn global() -> &'static Recorder {
        static R: OnceLock<&'static Recorder> = OnceLock::new();
        R.get_or_init(|| {
            let r: &'static Recorder =
                Box::leak(Box::new(Recorder { open: Mutex::default(), stats: Mutex::default(), sampling: Mutex::default() }));
            mnema_core::profile::install(Box::new(Forward(r)));
            static RUNNING: AtomicBool = AtomicBool::new(true);
            std::thread::spawn(move || {
                while RUNNING.load(Ordering::Relaxed) {
                    let rss = process_rss();
                    for p in r.sampling.lock().unwrap_or_else(|e| e.into_inner()).iter() {
                        p.fetch_max(rss, Ordering::Relaxed);
                    }
                    std::thread::sleep(Duration::from_millis(2));
                }
            });
            r
        })
    }

    /// Clears the collected figures.
    pub fn reset(&self) {
        self.stats.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }

    /// The figures so far, by stage name.
    pub fn stats(&self) -> Vec<StageStats> {
        self.stats.lock().unwrap_or_else(|e| e.into_inner()).values().cloned().collect()
    }
}

struct Forward(&'static Recorder);

impl Observer for Forward {
    fn enter(&self, name: &'static str) {
        let rss0 = process_rss();
        let peak = Arc::new(AtomicU64::new(rss0));
        self.0.sampling.lock().unwrap_or_else(|e| e.into_inner()).push(peak.clone());
        let o = Open { name, t0: Instant::now(), cpu0: cpu_time(), rss0, swap0: status_kb("VmSwap:"), psi0: psi_stall_us(), peak };
        self.0.open.lock().unwrap_or_else(|e| e.into_inner()).push(o);
    }

    fn exit(&self, name: &'static str) {
        let o = {
            let mut open = self.0.open.lock().unwrap_or_else(|e| e.into_inner());
            let Some(i) = open.iter().rposition(|o| o.name == name) else { return };
            open.remove(i)
        };
        self.0.sampling.lock().unwrap_or_else(|e| e.into_inner()).retain(|p| !Arc::ptr_eq(p, &o.peak));
        let rss1 = process_rss();
        let peak = o.peak.load(Ordering::Relaxed).max(rss1);
        let mut stats = self.0.stats.lock().unwrap_or_else(|e| e.into_inner());
        let s = stats.entry(name).or_insert_with(|| StageStats { stage: name, ..Default::default() });
        s.calls += 1;
        s.wall_ms += o.t0.elapsed().as_secs_f64() * 1e3;
        s.cpu_ms += cpu_time().saturating_sub(o.cpu0).as_secs_f64() * 1e3;
        s.peak_rss_bytes = s.peak_rss_bytes.max(peak);
        s.rss_delta_bytes += rss1 as i64 - o.rss0 as i64;
        s.swap_delta_bytes += status_kb("VmSwap:") as i64 - o.swap0 as i64;
        if let (Some(a), Some(b)) = (o.psi0, psi_stall_us()) {
            *s.memory_stall_ms.get_or_insert(0.0) += b.saturating_sub(a) as f64 / 1e3;
        }
    }
}

#[derive(Serialize)]
struct Report {
    command: Vec<String>,
    exit_code: u8,
    wall_ms: f64,
    cpu_ms: f64,
    peak_rss_bytes: u64,
    rss_start_bytes: u64,
    rss_end_bytes: u64,
    /// RSS once every model is unloaded again: what an idle process keeps.
    rss_idle_bytes: u64,
    swap_delta_bytes: i64,
    memory_budget_bytes: u64,
    stages: Vec<StageStats>,
    model_events: Vec<serde_json::Value>,
}

pub fn run(ctx: &Ctx, args: Args) -> Result<u8> {
    let inner = Cli::try_parse_from(std::iter::once("mnema".to_string()).chain(args.command.iter().cloned()))?;
    if matches!(inner.command, crate::Command::Profile(_)) {
        anyhow::bail!("cannot profile `profile` itself");
    }
    // The inner command keeps the outer global settings unless it sets its own.
    let mut inner_ctx = Ctx::new(&inner)?;
    if inner.home.is_none() {
        inner_ctx.config.home = ctx.config.home.clone();
    }
    if inner.models.is_none() {
        inner_ctx.config.models_dir = ctx.config.models_dir.clone();
    }
    if inner.memory_budget.is_none() {
        inner_ctx.budget = ctx.budget;
        inner_ctx.models = ctx.models.clone();
    }
    let rec = Recorder::global();
    rec.reset();
    let (t0, cpu0, rss0, swap0) = (Instant::now(), cpu_time(), process_rss(), status_kb("VmSwap:"));
    let code = crate::dispatch(&inner_ctx, inner.command)?;
    let rss_end = process_rss();
    inner_ctx.models.unload_all();
    let report = Report {
        command: args.command,
        exit_code: code,
        wall_ms: t0.elapsed().as_secs_f64() * 1e3,
        cpu_ms: cpu_time().saturating_sub(cpu0).as_secs_f64() * 1e3,
        peak_rss_bytes: status_kb("VmHWM:"),
        rss_start_bytes: rss0,
        rss_end_bytes: rss_end,
        rss_idle_bytes: process_rss(),
        swap_delta_bytes: status_kb("VmSwap:") as i64 - swap0 as i64,
        memory_budget_bytes: inner_ctx.budget.0,
        stages: rec.stats(),
        model_events: inner_ctx
            .models
            .events()
            .into_iter()
            .map(|e| match e {
                Event::Load { name, cost, elapsed } => {
                    serde_json::json!({ "event": "load", "model": name, "bytes": cost, "ms": elapsed.as_secs_f64() * 1e3 })
                }
                Event::Unload { name, reason } => serde_json::json!({ "event": "unload", "model": name, "reason": reason }),
            })
            .collect(),
    };
    if ctx.json {
        out_json(&report)?;
    } else {
        print_table(&report);
    }
    Ok(code)
}

fn mb(b: f64) -> String {
    format!("{:.1}", b / 1048576.0)
}

fn print_table(r: &Report) {
    eprintln!("\nprofile of `mnema {}` (exit {})", r.command.join(" "), r.exit_code);
    eprintln!(
        "{:<11} {:>5} {:>10} {:>10} {:>12} {:>10} {:>10} {:>13}",
        "stage", "calls", "wall ms", "cpu ms", "peak RSS MiB", "RSS Δ MiB", "swap Δ MiB", "mem stall ms"
    );
    for s in &r.stages {
        eprintln!(
            "{:<11} {:>5} {:>10.1} {:>10.1} {:>12} {:>10} {:>10} {:>13}",
            s.stage,
            s.calls,
            s.wall_ms,
            s.cpu_ms,
            mb(s.peak_rss_bytes as f64),
            mb(s.rss_delta_bytes as f64),
            mb(s.swap_delta_bytes as f64),
            s.memory_stall_ms.map_or("n/a".into(), |v| format!("{v:.1}"))
        );
    }
    eprintln!(
        "{:<11} {:>5} {:>10.1} {:>10.1} {:>12} {:>10} {:>10}",
        "total",
        "",
        r.wall_ms,
        r.cpu_ms,
        mb(r.peak_rss_bytes as f64),
        mb(r.rss_end_bytes as f64 - r.rss_start_bytes as f64),
        mb(r.swap_delta_bytes as f64)
    );
    eprintln!(
        "memory budget {} MiB; RSS with models unloaded afterwards {} MiB",
        mb(r.memory_budget_bytes as f64),
        mb(r.rss_idle_bytes as f64)
    );
    for e in &r.model_events {
        eprintln!("model {}: {}", e["event"].as_str().unwrap_or(""), e);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mnema_core::profile::stage;

    #[test]
    fn figures_match_a_known_allocation_and_busy_loop() {
        let rec = Recorder::global();
        rec.reset();
        {
            let _s = stage("alloc");
            let v = std::hint::black_box(vec![7u8; 256 << 20]); // touched: 256 MiB resident
            std::thread::sleep(Duration::from_millis(20));
            assert_eq!(std::hint::black_box(&v)[v.len() - 1], 7);
        }
        {
            // 300 ms of this thread's CPU time, however busy the machine is (a loop bounded by
            // wall time gets less CPU when other programs compete for the cores).
            let _s = stage("busy");
            let thread_cpu_ms = || {
                let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
                // SAFETY: clock_gettime writes one timespec through a valid pointer.
                unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
                ts.tv_sec as f64 * 1e3 + ts.tv_nsec as f64 / 1e6
            };
            let start = thread_cpu_ms();
            let mut x = 0u64;
            while thread_cpu_ms() - start < 300.0 {
                for _ in 0..1000 {
                    x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
                }
            }
            std::hint::black_box(x);
        }
        let stats = rec.stats();
        let alloc = stats.iter().find(|s| s.stage == "alloc").unwrap();
        let grew = alloc.peak_rss_bytes as i64 - process_rss() as i64;
        assert!(alloc.peak_rss_bytes >= (256 << 20), "peak {} below the allocation", alloc.peak_rss_bytes);
        assert!(((230 << 20)..=(300 << 20)).contains(&grew), "peak over the end RSS: {} MiB, want ~256", grew >> 20);
        assert!(alloc.rss_delta_bytes.abs() < (32 << 20), "freed at the end: delta {}", alloc.rss_delta_bytes);
        let busy = stats.iter().find(|s| s.stage == "busy").unwrap();
        assert!(busy.wall_ms >= 290.0, "wall {} for 300 ms of CPU", busy.wall_ms);
        assert!(
            (busy.cpu_ms - 300.0).abs() < 45.0 && busy.cpu_ms < busy.wall_ms * 1.5,
            "cpu {} for 300 ms of one thread's CPU",
            busy.cpu_ms
        );
    }
}
