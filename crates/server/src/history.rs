//! Resource figures over time for the resources page: every 2 s a sample of the process's
//! RSS, the memory models hold, and cumulative wall time per profiler stage (decode, ocr, asr,
//! embed, search, …), measured by a stage observer installed for the server's lifetime.

use std::cell::RefCell;
use std::collections::{BTreeMap, VecDeque};
use std::sync::{Mutex, OnceLock};
use std::time::Instant;

/// Cumulative calls and milliseconds per stage.
type Totals = BTreeMap<&'static str, (u64, f64)>;

static TOTALS: OnceLock<Mutex<Totals>> = OnceLock::new();

thread_local! {
    static OPEN: RefCell<Vec<(&'static str, Instant)>> = const { RefCell::new(Vec::new()) };
}

struct Clock;

impl mnema_core::profile::Observer for Clock {
    fn enter(&self, name: &'static str) {
        OPEN.with(|o| o.borrow_mut().push((name, Instant::now())));
    }
    fn exit(&self, name: &'static str) {
        let started = OPEN.with(|o| {
            let mut o = o.borrow_mut();
            let i = o.iter().rposition(|(n, _)| *n == name)?;
            Some(o.remove(i).1)
        });
        if let (Some(t0), Some(totals)) = (started, TOTALS.get()) {
            let mut t = totals.lock().unwrap_or_else(|e| e.into_inner());
            let e = t.entry(name).or_insert((0, 0.0));
            e.0 += 1;
            e.1 += t0.elapsed().as_secs_f64() * 1e3;
        }
    }
}

/// Starts measuring stages (once per process; false when another observer is installed).
pub(crate) fn install() -> bool {
    TOTALS.get_or_init(|| Mutex::new(Totals::new()));
    mnema_core::profile::install(Box::new(Clock))
}

/// The last 10 minutes of samples.
#[derive(Default)]
pub(crate) struct History {
    samples: Mutex<VecDeque<serde_json::Value>>,
}

impl History {
    const KEEP: usize = 300;

    pub(crate) fn sample(&self, t_s: f64, models_bytes: u64) {
        let stages: serde_json::Map<String, serde_json::Value> = TOTALS
            .get()
            .map(|t| {
                t.lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .iter()
                    .map(|(k, (n, ms))| (k.to_string(), serde_json::json!({ "calls": n, "ms": (ms * 10.0).round() / 10.0 })))
                    .collect()
            })
            .unwrap_or_default();
        let v = serde_json::json!({ "t_s": (t_s * 10.0).round() / 10.0, "rss_bytes": mnema_models::manager::process_rss(), "models_bytes": models_bytes, "stages": stages });
        let mut s = self.samples.lock().unwrap_or_else(|e| e.into_inner());
        if s.len() >= Self::KEEP {
            s.pop_front();
        }
        s.push_back(v);
    }

    pub(crate) fn to_json(&self) -> serde_json::Value {
        self.samples.lock().unwrap_or_else(|e| e.into_inner()).iter().cloned().collect::<Vec<_>>().into()
    }
}
