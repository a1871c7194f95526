//! The memory-budgeted model manager: every model is acquired through it.
//!
//! It keeps a byte budget for the whole process. Before a load it checks that the model's
//! estimated cost fits (evicting least-recently-used idle models to make room) and that the
//! machine has that much RAM available, so loading never pushes the machine into swap. After
//! the load it records the measured cost (resident-memory growth while loading; loads are
//! serialised so the growth is the model's). Models idle longer than a timeout are unloaded.
//! Concurrent requests for one model load it once.
//!
//! **Architecture Invariant:** a model is in use while an `Arc` handed out by [`acquire`]
//! lives; only models nobody holds are evicted.
//!
//! [`acquire`]: ModelManager::acquire

use crate::ModelError;
use std::any::Any;
use std::collections::HashMap;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

type Shared = Arc<dyn Any + Send + Sync>;

struct Slot {
    value: Shared,
    cost: u64,
    last_used: Instant,
}

enum Entry {
    Loading,
    Ready(Slot),
}

/// Something that happened to a model, for the profiler and status displays.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// A model was loaded.
    Load {
        /// Model name.
        name: String,
        /// Measured cost in bytes.
        cost: u64,
        /// Load time.
        elapsed: Duration,
    },
    /// A model was unloaded.
    Unload {
        /// Model name.
        name: String,
        /// Why: `evicted`, `idle` or `requested`.
        reason: &'static str,
    },
}

/// A loaded model as status reports show it.
#[derive(Debug, Clone, PartialEq)]
pub struct LoadedModel {
    /// Model name.
    pub name: String,
    /// Bytes charged to the budget.
    pub cost: u64,
    /// Whether someone holds it right now.
    pub in_use: bool,
    /// Time since last acquired.
    pub idle: Duration,
}

/// Current resident memory of this process in bytes (Linux /proc; 0 elsewhere).
pub fn process_rss() -> u64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1).and_then(|v| v.parse::<u64>().ok()))
        .unwrap_or(0)
        * 4096
}

/// A `kB` field of /proc/self/status (`VmHWM:`, `VmSwap:`), in bytes; 0 when unknown.
pub fn status_kb(key: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with(key)).and_then(|l| l.split_whitespace().nth(1)).and_then(|v| v.parse().ok()))
        .unwrap_or(0)
        * 1024
}

/// Memory the machine can still give without swapping, bytes (`MemAvailable`).
pub fn available_memory() -> u64 {
    let mut sys = match sysinfo::System::new() {
        Ok(s) => s,
        Err(_) => return u64::MAX,
    };
    sys.refresh_memory();
    sys.available_memory()
}

/// The manager. Share it in an `Arc`.
pub struct ModelManager {
    budget: u64,
    idle_timeout: Duration,
    /// Memory to leave free on the machine beyond a model's cost.
    headroom: u64,
    state: Mutex<HashMap<String, Entry>>,
    changed: Condvar,
    load_lock: Mutex<()>,
    events: Mutex<Vec<Event>>,
    available: Box<dyn Fn() -> u64 + Send + Sync>,
}

impl ModelManager {
    /// A manager with a budget (bytes) for the models it holds.
    pub fn new(budget: u64) -> ModelManager {
        ModelManager {
            budget,
            idle_timeout: Duration::from_secs(300),
            headroom: 256 << 20,
            state: Mutex::new(HashMap::new()),
            changed: Condvar::new(),
            load_lock: Mutex::new(()),
            events: Mutex::new(Vec::new()),
            available: Box::new(available_memory),
        }
    }

    /// Unload models idle for longer than this (default 5 minutes).
    pub fn with_idle_timeout(mut self, t: Duration) -> Self {
        self.idle_timeout = t;
        self
    }

    /// Replaces the probe of available machine memory (tests simulate a low-memory machine).
    pub fn with_available_memory(mut self, f: impl Fn() -> u64 + Send + Sync + 'static, headroom: u64) -> Self {
        self.available = Box::new(f);
        self.headroom = headroom;
        self
    }

    /// The budget in bytes.
    pub fn budget(&self) -> u64 {
        self.budget
    }

    /// Bytes charged by loaded models.
    pub fn used(&self) -> u64 {
        let st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        st.values().map(|e| if let Entry::Ready(s) = e { s.cost } else { 0 }).sum()
    }

    /// The budget left for more models.
    pub fn free(&self) -> u64 {
        self.budget.saturating_sub(self.used())
    }

    /// Returns the model `name`, loading it with `load` if needed. `estimate` is its expected
    /// cost in bytes (from file sizes), checked against the budget before loading.
    pub fn acquire<T: Any + Send + Sync, E: From<ModelError>>(
        &self,
        name: &str,
        estimate: u64,
        load: impl FnOnce() -> Result<T, E>,
    ) -> Result<Arc<T>, E> {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            match st.get_mut(name) {
                Some(Entry::Ready(slot)) => {
                    slot.last_used = Instant::now();
                    return slot
                        .value
                        .clone()
                        .downcast::<T>()
                        .map_err(|_| ModelError::Unknown(format!("{name} (loaded as another type)")).into());
                }
                Some(Entry::Loading) => st = self.changed.wait(st).unwrap_or_else(|e| e.into_inner()),
                None => break,
            }
        }
        if estimate > self.budget {
            return Err(ModelError::OverBudget {
                model: name.into(),
                cost: estimate,
                budget: self.budget,
                detail: "raise --memory-budget".into(),
            }
            .into());
        }
        // Make room: evict idle models, least recently used first.
        let mut used: u64 = st.values().map(|e| if let Entry::Ready(s) = e { s.cost } else { 0 }).sum();
        while used + estimate > self.budget {
            let victim = st
                .iter()
                .filter_map(|(k, e)| match e {
                    Entry::Ready(s) if Arc::strong_count(&s.value) == 1 => Some((k.clone(), s.last_used)),
                    _ => None,
                })
                .min_by_key(|(_, t)| *t)
                .map(|(k, _)| k);
            let Some(victim) = victim else {
                let busy: Vec<String> = st.keys().cloned().collect();
                return Err(ModelError::OverBudget {
                    model: name.into(),
                    cost: estimate,
                    budget: self.budget,
                    detail: format!("in use: {}", busy.join(", ")),
                }
                .into());
            };
            if let Some(Entry::Ready(s)) = st.remove(&victim) {
                used -= s.cost;
                drop(s);
                self.record(Event::Unload { name: victim, reason: "evicted" });
                crate::release_free_memory();
            }
        }
        // Never load into swap: the machine must have the model's size free plus headroom.
        let avail = (self.available)();
        if avail < estimate.saturating_add(self.headroom) {
            return Err(ModelError::LowMemory { model: name.into(), cost: estimate, available: avail }.into());
        }
        st.insert(name.into(), Entry::Loading);
        drop(st);

        let loaded = {
            let _serial = self.load_lock.lock().unwrap_or_else(|e| e.into_inner());
            let (before, t0) = (process_rss(), Instant::now());
            crate::set_mmap_threshold(4 << 20);
            let r = load();
            crate::set_mmap_threshold(32 << 20);
            crate::release_free_memory();
            r.map(|v| (v, process_rss().saturating_sub(before), t0.elapsed()))
        };
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let result = match loaded {
            Ok((value, grown, elapsed)) => {
                // RSS growth is the real cost; a model whose pages are mapped lazily may grow
                // later, so the estimate is the floor.
                let cost = grown.max(estimate);
                let value = Arc::new(value);
                st.insert(name.into(), Entry::Ready(Slot { value: value.clone(), cost, last_used: Instant::now() }));
                self.record(Event::Load { name: name.into(), cost, elapsed });
                Ok(value)
            }
            Err(e) => {
                st.remove(name);
                Err(e)
            }
        };
        self.changed.notify_all();
        result
    }

    /// Unloads models nobody holds that have been idle longer than the timeout; returns how
    /// many went.
    pub fn unload_idle(&self) -> usize {
        self.unload_where(|s| s.last_used.elapsed() >= self.idle_timeout, "idle")
    }

    /// Unloads every model nobody holds.
    pub fn unload_all(&self) -> usize {
        self.unload_where(|_| true, "requested")
    }

    fn unload_where(&self, pred: impl Fn(&Slot) -> bool, reason: &'static str) -> usize {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let names: Vec<String> = st
            .iter()
            .filter_map(|(k, e)| match e {
                Entry::Ready(s) if Arc::strong_count(&s.value) == 1 && pred(s) => Some(k.clone()),
                _ => None,
            })
            .collect();
        for n in &names {
            st.remove(n);
            self.record(Event::Unload { name: n.clone(), reason });
        }
        drop(st);
        if !names.is_empty() {
            crate::release_free_memory();
        }
        names.len()
    }

    /// The loaded models.
    pub fn loaded(&self) -> Vec<LoadedModel> {
        let st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let mut v: Vec<LoadedModel> = st
            .iter()
            .filter_map(|(k, e)| match e {
                Entry::Ready(s) => Some(LoadedModel {
                    name: k.clone(),
                    cost: s.cost,
                    in_use: Arc::strong_count(&s.value) > 1,
                    idle: s.last_used.elapsed(),
                }),
                Entry::Loading => None,
            })
            .collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    }

    /// Events so far (loads, unloads), oldest first.
    pub fn events(&self) -> Vec<Event> {
        self.events.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn record(&self, e: Event) {
        tracing::info!("{e:?}");
        self.events.lock().unwrap_or_else(|e| e.into_inner()).push(e);
    }
}

/// The default budget: a quarter of the machine's memory, at least 512 MiB.
pub fn default_budget() -> u64 {
    let total = sysinfo::System::new().map(|mut s| {
        s.refresh_memory();
        s.total_memory()
    });
    (total.unwrap_or(2 << 30) / 4).max(512 << 20)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MB: u64 = 1 << 20;

    /// A stand-in model: `mb` MiB of touched memory (logic tests need no real weights).
    fn blob(mb: u64) -> Vec<u8> {
        vec![1u8; (mb * MB) as usize]
    }

    fn manager(budget_mb: u64) -> ModelManager {
        ModelManager::new(budget_mb * MB).with_available_memory(|| u64::MAX, 0)
    }

    #[test]
    fn refuses_a_model_larger_than_the_budget_with_names_and_sizes() {
        let m = manager(100);
        let err = m.acquire("whisper-base", 300 * MB, || Ok::<_, ModelError>(blob(1))).unwrap_err().to_string();
        assert!(err.contains("whisper-base") && err.contains("300.0 MiB") && err.contains("100.0 MiB"), "{err}");
        assert!(m.loaded().is_empty());
    }

    #[test]
    fn evicts_least_recently_used_idle_models() {
        let m = manager(100);
        let a = m.acquire("a", 40 * MB, || Ok::<_, ModelError>(blob(1))).unwrap();
        drop(a);
        let b = m.acquire("b", 40 * MB, || Ok::<_, ModelError>(blob(1))).unwrap();
        // a is idle and older: it goes to make room for c; b is held and stays.
        let _c = m.acquire("c", 40 * MB, || Ok::<_, ModelError>(blob(1))).unwrap();
        let names: Vec<String> = m.loaded().into_iter().map(|l| l.name).collect();
        assert_eq!(names, vec!["b", "c"]);
        assert!(m.events().contains(&Event::Unload { name: "a".into(), reason: "evicted" }));
        // Nothing idle left to evict while b and c are held: a clear refusal.
        let err = m.acquire("d", 40 * MB, || Ok::<_, ModelError>(blob(1))).unwrap_err().to_string();
        assert!(err.contains("in use"), "{err}");
        drop(b);
        assert!(m.acquire("d", 40 * MB, || Ok::<_, ModelError>(blob(1))).is_ok());
    }

    #[test]
    fn concurrent_requests_load_once() {
        let m = Arc::new(manager(100));
        let loads = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let handles: Vec<_> = (0..8)
            .map(|_| {
                let (m, loads) = (m.clone(), loads.clone());
                std::thread::spawn(move || {
                    m.acquire("e5", 10 * MB, || {
                        loads.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        std::thread::sleep(Duration::from_millis(100));
                        Ok::<_, ModelError>(blob(1))
                    })
                    .unwrap()
                })
            })
            .collect();
        let got: Vec<Arc<Vec<u8>>> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        assert_eq!(loads.load(std::sync::atomic::Ordering::SeqCst), 1);
        assert!(got.windows(2).all(|w| Arc::ptr_eq(&w[0], &w[1])));
    }

    #[test]
    fn refuses_to_load_into_swap() {
        let m = ModelManager::new(4096 * MB).with_available_memory(|| 300 * MB, 256 * MB);
        let err = m.acquire("big", 200 * MB, || Ok::<_, ModelError>(blob(1))).unwrap_err().to_string();
        assert!(err.contains("available") && err.contains("big"), "{err}");
    }

    #[test]
    fn eviction_frees_resident_memory() {
        let m = manager(1024);
        let before = process_rss();
        let model = m.acquire("big", 64 * MB, || Ok::<_, ModelError>(blob(256))).unwrap();
        let loaded = process_rss();
        assert!(loaded >= before + 200 * MB, "load grew RSS by {} MB", (loaded - before) / MB);
        // Cost recorded is the measured growth, not the (low) estimate.
        assert!(m.loaded()[0].cost >= 200 * MB);
        drop(model);
        assert_eq!(m.unload_all(), 1);
        let after = process_rss();
        assert!(after < loaded - 200 * MB, "unload left RSS at {} MB (was {} MB)", after / MB, loaded / MB);
    }

    #[test]
    fn idle_models_time_out() {
        let m = manager(100).with_idle_timeout(Duration::from_millis(50));
        drop(m.acquire("a", MB, || Ok::<_, ModelError>(blob(1))).unwrap());
        let held = m.acquire("b", MB, || Ok::<_, ModelError>(blob(1))).unwrap();
        assert_eq!(m.unload_idle(), 0);
        std::thread::sleep(Duration::from_millis(80));
        assert_eq!(m.unload_idle(), 1, "a goes, b is held");
        drop(held);
    }
}
