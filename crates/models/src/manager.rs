//! The memory-budgeted model manager: every model is acquired through it.
//!
//! It keeps a byte budget for the whole process. Before a load it checks that the model's
//! estimated cost fits (evicting least-recently-used idle models to make room) and that the
//! machine has that much RAM available, so loading never pushes the machine into swap. The
//! estimate is charged under the same lock as the check, before the load starts, and
//! corrected to the measured cost after (resident-memory growth while loading; loads are
//! serialised so the growth is the model's). Transient working memory (decoded pixels,
//! buffers) is charged to the same budget through [`reserve`], which evicts idle models too.
//! Models idle longer than a timeout are unloaded by the manager's own reaper thread.
//! Concurrent requests for one model load it once. The event log keeps the last
//! [`EVENTS_KEPT`] events.
//!
//! **Architecture Invariant:** a model is in use while an `Arc` handed out by [`acquire`]
//! lives; only models nobody holds are evicted.
//! **Architecture Invariant:** everything charged (models loaded or loading, reservations)
//! never exceeds the budget at the moment it is charged; a load may measure above its
//! estimate afterwards.
//!
//! [`acquire`]: ModelManager::acquire
//! [`reserve`]: ModelManager::reserve

use crate::ModelError;
use std::any::Any;
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

type Shared = Arc<dyn Any + Send + Sync>;

/// How long a model nobody uses stays loaded by default (README promises 5 minutes).
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(300);

struct Slot {
    value: Shared,
    cost: u64,
    last_used: Instant,
}

enum Entry {
    /// Being loaded; charged its estimate.
    Loading(u64),
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

/// How many events [`ModelManager::events`] keeps (the oldest go first).
pub const EVENTS_KEPT: usize = 256;

/// Everything charged to the budget, under one lock: models (a loading model is charged
/// its estimate) and transient reservations.
struct Charges {
    models: HashMap<String, Entry>,
    reserved: u64,
    /// Outstanding reservations by what they are for (for refusals that say what holds the budget).
    holders: HashMap<u64, (String, u64)>,
    next_id: u64,
}

impl Charges {
    fn used(&self) -> u64 {
        self.models.values().map(Entry::cost).sum::<u64>() + self.reserved
    }
}

impl Entry {
    fn cost(&self) -> u64 {
        match self {
            Entry::Loading(cost) => *cost,
            Entry::Ready(s) => s.cost,
        }
    }
}

struct Inner {
    budget: u64,
    idle_timeout: Option<Duration>,
    /// Memory to leave free on the machine beyond a model's cost.
    headroom: u64,
    state: Mutex<Charges>,
    changed: Condvar,
    load_lock: Mutex<()>,
    events: Mutex<VecDeque<Event>>,
    available: Box<dyn Fn() -> u64 + Send + Sync>,
    /// The idle reaper: started with the first load, stopped when the manager is dropped.
    reaper: Mutex<ReaperState>,
    reaper_wake: Condvar,
}

#[derive(Default)]
struct ReaperState {
    started: bool,
    stop: bool,
}

/// The manager. Share it in an `Arc`.
///
/// Models idle longer than the idle timeout are unloaded by the manager itself: a small
/// thread, started with the first load, checks a few times per timeout and exits when the
/// manager is dropped. No caller has to remember to call [`unload_idle`](Self::unload_idle).
pub struct ModelManager {
    inner: Arc<Inner>,
}

/// Transient memory (decoded pixels, buffers) charged to the budget while it lives; released
/// on drop. Obtained from [`ModelManager::reserve`].
#[must_use = "the memory is released when the reservation is dropped"]
pub struct Reservation {
    inner: Arc<Inner>,
    id: u64,
    bytes: u64,
}

impl Reservation {
    /// Bytes charged.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }
}

impl std::fmt::Debug for Reservation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reservation").field("bytes", &self.bytes).finish()
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        let mut st = self.inner.state.lock().unwrap_or_else(|e| e.into_inner());
        st.reserved = st.reserved.saturating_sub(self.bytes);
        st.holders.remove(&self.id);
        drop(st);
        self.inner.changed.notify_all();
    }
}

impl Drop for ModelManager {
    fn drop(&mut self) {
        let mut r = self.inner.reaper.lock().unwrap_or_else(|e| e.into_inner());
        r.stop = true;
        drop(r);
        self.inner.reaper_wake.notify_all();
    }
}

impl ModelManager {
    /// A manager with a budget (bytes) for the models it holds.
    pub fn new(budget: u64) -> ModelManager {
        ModelManager {
            inner: Arc::new(Inner {
                budget,
                idle_timeout: Some(DEFAULT_IDLE_TIMEOUT),
                headroom: 256 << 20,
                state: Mutex::new(Charges { models: HashMap::new(), reserved: 0, holders: HashMap::new(), next_id: 0 }),
                changed: Condvar::new(),
                load_lock: Mutex::new(()),
                events: Mutex::new(VecDeque::new()),
                available: Box::new(available_memory),
                reaper: Mutex::new(ReaperState::default()),
                reaper_wake: Condvar::new(),
            }),
        }
    }

    fn configure(&mut self) -> &mut Inner {
        Arc::get_mut(&mut self.inner).expect("a manager is configured before it is shared")
    }

    /// Unload models idle for longer than this (default 5 minutes); `None` keeps them loaded.
    pub fn with_idle_timeout(mut self, t: impl Into<Option<Duration>>) -> Self {
        self.configure().idle_timeout = t.into();
        self
    }

    /// Replaces the probe of available machine memory (tests simulate a low-memory machine).
    pub fn with_available_memory(mut self, f: impl Fn() -> u64 + Send + Sync + 'static, headroom: u64) -> Self {
        let inner = self.configure();
        inner.available = Box::new(f);
        inner.headroom = headroom;
        self
    }

    /// The budget in bytes.
    pub fn budget(&self) -> u64 {
        self.inner.budget
    }

    /// The idle timeout (`None`: models stay until evicted).
    pub fn idle_timeout(&self) -> Option<Duration> {
        self.inner.idle_timeout
    }

    /// Bytes charged to the budget: loaded models, models being loaded (their estimate) and
    /// outstanding reservations.
    pub fn used(&self) -> u64 {
        self.inner.lock().used()
    }

    /// Bytes charged by outstanding reservations alone.
    pub fn reserved(&self) -> u64 {
        self.inner.lock().reserved
    }

    /// The budget left for more models.
    pub fn free(&self) -> u64 {
        self.inner.budget.saturating_sub(self.used())
    }

    /// Charges `bytes` of transient memory (`what`: e.g. "decoding scan.png") to the budget,
    /// evicting idle models (least recently used first) to make room. Refuses with
    /// [`ModelError::NoRoom`] when it cannot fit, without waiting. Released when the returned
    /// [`Reservation`] is dropped.
    pub fn reserve(&self, what: &str, bytes: u64) -> Result<Reservation, ModelError> {
        self.reserve_within(what, bytes, Duration::ZERO)
    }

    /// Like [`reserve`](Self::reserve), but when the budget is held by reservations or models
    /// in use, waits up to `wait` for them to be released before refusing. Do not call it
    /// while holding a reservation the wait would need.
    pub fn reserve_within(&self, what: &str, bytes: u64, wait: Duration) -> Result<Reservation, ModelError> {
        let inner = &self.inner;
        if bytes > inner.budget {
            return Err(ModelError::NoRoom {
                what: what.into(),
                bytes,
                free: inner.budget,
                budget: inner.budget,
                detail: "raise --memory-budget".into(),
            });
        }
        let deadline = Instant::now() + wait;
        let mut st = inner.lock();
        loop {
            match inner.make_room(&mut st, bytes) {
                Ok(()) => break,
                Err(detail) => {
                    let now = Instant::now();
                    if now >= deadline {
                        return Err(ModelError::NoRoom {
                            what: what.into(),
                            bytes,
                            free: inner.budget.saturating_sub(st.used()),
                            budget: inner.budget,
                            detail,
                        });
                    }
                    // Waits in short slices: a model in use is released by dropping its `Arc`, which
                    // signals nobody, so the room it leaves is found by looking again.
                    let slice = (deadline - now).min(Duration::from_millis(50));
                    st = inner.changed.wait_timeout(st, slice).unwrap_or_else(|e| e.into_inner()).0;
                }
            }
        }
        st.reserved += bytes;
        st.next_id += 1;
        let id = st.next_id;
        st.holders.insert(id, (what.to_string(), bytes));
        Ok(Reservation { inner: inner.clone(), id, bytes })
    }

    /// Returns the model `name`, loading it with `load` if needed. `estimate` is its expected
    /// cost in bytes (from file sizes): it is charged to the budget before the load starts,
    /// under the same lock as the check (so two different models loading at once cannot both
    /// pass it), and corrected to the measured cost after.
    pub fn acquire<T: Any + Send + Sync, E: From<ModelError>>(
        &self,
        name: &str,
        estimate: u64,
        load: impl FnOnce() -> Result<T, E>,
    ) -> Result<Arc<T>, E> {
        let inner = &self.inner;
        let mut st = inner.lock();
        loop {
            match st.models.get_mut(name) {
                Some(Entry::Ready(slot)) => {
                    slot.last_used = Instant::now();
                    return slot
                        .value
                        .clone()
                        .downcast::<T>()
                        .map_err(|_| ModelError::Unknown(format!("{name} (loaded as another type)")).into());
                }
                Some(Entry::Loading(_)) => st = inner.changed.wait(st).unwrap_or_else(|e| e.into_inner()),
                None => break,
            }
        }
        if estimate > inner.budget {
            return Err(ModelError::OverBudget {
                model: name.into(),
                cost: estimate,
                budget: inner.budget,
                detail: "raise --memory-budget".into(),
            }
            .into());
        }
        if let Err(detail) = inner.make_room(&mut st, estimate) {
            return Err(ModelError::OverBudget { model: name.into(), cost: estimate, budget: inner.budget, detail }.into());
        }
        // Never load into swap: the machine must have the model's size free plus headroom.
        let avail = (inner.available)();
        if avail < estimate.saturating_add(inner.headroom) {
            return Err(ModelError::LowMemory { model: name.into(), cost: estimate, available: avail }.into());
        }
        // The estimate is charged from here on: a concurrent acquire of another model sees it.
        st.models.insert(name.into(), Entry::Loading(estimate));
        drop(st);

        let loaded = {
            let _serial = inner.load_lock.lock().unwrap_or_else(|e| e.into_inner());
            let (before, t0) = (process_rss(), Instant::now());
            crate::set_mmap_threshold(4 << 20);
            // A panicking loader must not leave the name charged and `Loading` forever.
            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(load));
            crate::set_mmap_threshold(32 << 20);
            crate::release_free_memory();
            r.map(|r| r.map(|v| (v, process_rss().saturating_sub(before), t0.elapsed())))
        };
        let mut st = inner.lock();
        let result = match loaded {
            Ok(Ok((value, grown, elapsed))) => {
                // RSS growth is the real cost; a model whose pages are mapped lazily may grow
                // later, so the estimate is the floor.
                let cost = grown.max(estimate);
                let value = Arc::new(value);
                st.models.insert(name.into(), Entry::Ready(Slot { value: value.clone(), cost, last_used: Instant::now() }));
                inner.record(Event::Load { name: name.into(), cost, elapsed });
                Ok(value)
            }
            Ok(Err(e)) => {
                st.models.remove(name);
                Err(e)
            }
            Err(panic) => {
                st.models.remove(name);
                drop(st);
                inner.changed.notify_all();
                std::panic::resume_unwind(panic);
            }
        };
        drop(st);
        inner.changed.notify_all();
        if result.is_ok() {
            self.start_reaper();
        }
        result
    }

    /// Starts the idle reaper once (no thread when there is no timeout).
    fn start_reaper(&self) {
        let Some(timeout) = self.inner.idle_timeout else { return };
        let mut r = self.inner.reaper.lock().unwrap_or_else(|e| e.into_inner());
        if r.started || r.stop {
            return;
        }
        r.started = true;
        drop(r);
        // Check a few times per timeout, so a model goes within about 1.25 timeouts of its last use.
        let tick = (timeout / 4).clamp(Duration::from_millis(10), Duration::from_secs(30));
        let weak = Arc::downgrade(&self.inner);
        let spawned = std::thread::Builder::new().name("mnema-idle-unload".into()).spawn(move || loop {
            let Some(inner) = weak.upgrade() else { return };
            {
                let r = inner.reaper.lock().unwrap_or_else(|e| e.into_inner());
                let r = inner.reaper_wake.wait_timeout_while(r, tick, |r| !r.stop).unwrap_or_else(|e| e.into_inner()).0;
                if r.stop {
                    return;
                }
            }
            inner.unload_where(|s| s.last_used.elapsed() >= timeout, "idle");
        });
        if let Err(e) = spawned {
            tracing::warn!("cannot start the idle-model reaper: {e}; idle models stay loaded");
        }
    }

    /// Unloads models nobody holds that have been idle longer than the timeout; returns how
    /// many went. The manager does this by itself; this is for callers that want it now.
    pub fn unload_idle(&self) -> usize {
        match self.inner.idle_timeout {
            Some(t) => self.inner.unload_where(|s| s.last_used.elapsed() >= t, "idle"),
            None => 0,
        }
    }

    /// Unloads every model nobody holds.
    pub fn unload_all(&self) -> usize {
        self.inner.unload_where(|_| true, "requested")
    }

    /// The loaded models.
    pub fn loaded(&self) -> Vec<LoadedModel> {
        let st = self.inner.lock();
        let mut v: Vec<LoadedModel> = st
            .models
            .iter()
            .filter_map(|(k, e)| match e {
                Entry::Ready(s) => Some(LoadedModel {
                    name: k.clone(),
                    cost: s.cost,
                    in_use: Arc::strong_count(&s.value) > 1,
                    idle: s.last_used.elapsed(),
                }),
                Entry::Loading(_) => None,
            })
            .collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    }

    /// The last [`EVENTS_KEPT`] events (loads, unloads), oldest first.
    pub fn events(&self) -> Vec<Event> {
        self.inner.events.lock().unwrap_or_else(|e| e.into_inner()).iter().cloned().collect()
    }
}

impl Inner {
    fn lock(&self) -> std::sync::MutexGuard<'_, Charges> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Evicts idle models, least recently used first, until `bytes` more fit in the budget.
    /// On failure nothing more can go: the reason names what holds the budget.
    fn make_room(&self, st: &mut Charges, bytes: u64) -> Result<(), String> {
        let mut used = st.used();
        while used.saturating_add(bytes) > self.budget {
            let victim = st
                .models
                .iter()
                .filter_map(|(k, e)| match e {
                    Entry::Ready(s) if Arc::strong_count(&s.value) == 1 => Some((k.clone(), s.last_used)),
                    _ => None,
                })
                .min_by_key(|(_, t)| *t)
                .map(|(k, _)| k);
            let Some(victim) = victim else {
                let mut busy: Vec<String> = st
                    .models
                    .iter()
                    .map(|(k, e)| match e {
                        Entry::Loading(c) => format!("{k} loading ({})", mnema_core::ByteSize(*c)),
                        Entry::Ready(s) => format!("{k} ({})", mnema_core::ByteSize(s.cost)),
                    })
                    .collect();
                busy.sort();
                let mut held: Vec<&(String, u64)> = st.holders.values().collect();
                held.sort();
                busy.extend(held.into_iter().map(|(w, b)| format!("{w} ({})", mnema_core::ByteSize(*b))));
                return Err(format!("in use: {}", busy.join(", ")));
            };
            if let Some(Entry::Ready(s)) = st.models.remove(&victim) {
                used -= s.cost;
                drop(s);
                self.record(Event::Unload { name: victim, reason: "evicted" });
                crate::release_free_memory();
            }
        }
        Ok(())
    }

    fn unload_where(&self, pred: impl Fn(&Slot) -> bool, reason: &'static str) -> usize {
        let mut st = self.lock();
        let names: Vec<String> = st
            .models
            .iter()
            .filter_map(|(k, e)| match e {
                Entry::Ready(s) if Arc::strong_count(&s.value) == 1 && pred(s) => Some(k.clone()),
                _ => None,
            })
            .collect();
        for n in &names {
            st.models.remove(n);
            self.record(Event::Unload { name: n.clone(), reason });
        }
        drop(st);
        if !names.is_empty() {
            self.changed.notify_all();
            crate::release_free_memory();
        }
        names.len()
    }

    fn record(&self, e: Event) {
        tracing::info!("{e:?}");
        let mut ev = self.events.lock().unwrap_or_else(|e| e.into_inner());
        if ev.len() >= EVENTS_KEPT {
            ev.pop_front();
        }
        ev.push_back(e);
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
    fn idle_models_are_unloaded_without_a_caller() {
        let m = manager(100).with_idle_timeout(Duration::from_millis(100));
        drop(m.acquire("idle", MB, || Ok::<_, ModelError>(blob(1))).unwrap());
        let held = m.acquire("held", MB, || Ok::<_, ModelError>(blob(1))).unwrap();
        let t0 = Instant::now();
        while m.loaded().len() > 1 && t0.elapsed() < Duration::from_secs(5) {
            std::thread::sleep(Duration::from_millis(20));
        }
        let names: Vec<String> = m.loaded().into_iter().map(|l| l.name).collect();
        assert_eq!(names, vec!["held"], "nobody called unload_idle: the manager must unload the idle model itself");
        assert!(t0.elapsed() < Duration::from_secs(3), "took {:?} for a 100 ms timeout", t0.elapsed());
        assert!(m.events().contains(&Event::Unload { name: "idle".into(), reason: "idle" }));
        // A held model stays however long it is held.
        std::thread::sleep(Duration::from_millis(300));
        assert_eq!(m.loaded().len(), 1);
        drop(held);
        std::thread::sleep(Duration::from_millis(400));
        assert!(m.loaded().is_empty());
        assert_eq!(m.used(), 0);
    }

    #[test]
    fn no_idle_timeout_keeps_models() {
        let m = manager(100).with_idle_timeout(None::<Duration>);
        drop(m.acquire("a", MB, || Ok::<_, ModelError>(blob(1))).unwrap());
        std::thread::sleep(Duration::from_millis(100));
        assert_eq!(m.unload_idle(), 0);
        assert_eq!(m.loaded().len(), 1);
    }

    #[test]
    fn two_models_loading_at_once_cannot_both_pass_the_budget() {
        // 100 MiB fits one 60 MiB model, not two: the first load's estimate is charged
        // before it starts, so the second request sees it.
        let m = Arc::new(manager(100));
        let start = Arc::new(std::sync::Barrier::new(2));
        let loads = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let handles: Vec<_> = ["whisper", "e5"]
            .into_iter()
            .map(|name| {
                let (m, start, loads) = (m.clone(), start.clone(), loads.clone());
                std::thread::spawn(move || {
                    start.wait();
                    m.acquire(name, 60 * MB, || {
                        loads.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        std::thread::sleep(Duration::from_millis(300));
                        Ok::<_, ModelError>(blob(1))
                    })
                })
            })
            .collect();
        let results: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        assert_eq!(loads.load(std::sync::atomic::Ordering::SeqCst), 1, "both models were loaded");
        let refused: Vec<String> = results.iter().filter_map(|r| r.as_ref().err()).map(|e| e.to_string()).collect();
        assert_eq!(refused.len(), 1, "{refused:?}");
        assert!(refused[0].contains("loading"), "{}", refused[0]);
        assert!(matches!(results.iter().find_map(|r| r.as_ref().err()), Some(ModelError::OverBudget { .. })));
        assert!(m.used() <= m.budget());
    }

    #[test]
    fn a_panicking_loader_leaves_nothing_charged() {
        let m = Arc::new(manager(100));
        let m2 = m.clone();
        let r = std::thread::spawn(move || m2.acquire("bad", 60 * MB, || -> Result<Vec<u8>, ModelError> { panic!("loader bug") })).join();
        assert!(r.is_err());
        assert_eq!(m.used(), 0);
        assert!(m.acquire("bad", 60 * MB, || Ok::<_, ModelError>(blob(1))).is_ok());
    }

    #[test]
    fn reserve_evicts_idle_models_and_refuses_beyond_the_budget() {
        let m = manager(100);
        drop(m.acquire("old", 40 * MB, || Ok::<_, ModelError>(blob(1))).unwrap());
        drop(m.acquire("new", 40 * MB, || Ok::<_, ModelError>(blob(1))).unwrap());
        // 30 MiB of pixels: the least recently used idle model makes room.
        let pixels = m.reserve("decoding a.png", 30 * MB).unwrap();
        assert_eq!(pixels.bytes(), 30 * MB);
        let names: Vec<String> = m.loaded().into_iter().map(|l| l.name).collect();
        assert_eq!(names, vec!["new"]);
        assert!(m.events().contains(&Event::Unload { name: "old".into(), reason: "evicted" }));
        assert_eq!(m.used(), 70 * MB);
        assert_eq!(m.reserved(), 30 * MB);
        // A held model and the reservation leave 30 MiB: 31 does not fit, and says why.
        let held = m.acquire("new", 40 * MB, || Ok::<_, ModelError>(blob(1))).unwrap();
        let err = m.reserve("decoding б.png", 31 * MB).unwrap_err();
        assert!(matches!(err, ModelError::NoRoom { .. }));
        let msg = err.to_string();
        assert!(msg.contains("decoding б.png") && msg.contains("decoding a.png") && msg.contains("new"), "{msg}");
        // Models are refused while the reservation holds the room.
        let err = m.acquire("third", 40 * MB, || Ok::<_, ModelError>(blob(1))).unwrap_err().to_string();
        assert!(err.contains("decoding a.png"), "{err}");
        // More than the whole budget never fits.
        assert!(m.reserve("decoding huge.png", 101 * MB).unwrap_err().to_string().contains("raise --memory-budget"));
        // Dropping releases: the room is back.
        drop(pixels);
        assert_eq!(m.reserved(), 0);
        let second = m.reserve("decoding б.png", 60 * MB).unwrap();
        drop(held);
        // Evicting the now idle model makes room for a reservation that needs it.
        let third = m.reserve("buffers", 40 * MB).unwrap();
        assert!(m.loaded().is_empty());
        assert_eq!(m.used(), 100 * MB);
        drop((second, third));
        assert_eq!(m.used(), 0);
    }

    #[test]
    fn reserve_within_waits_for_a_release() {
        let m = Arc::new(manager(100));
        let first = m.reserve("a", 80 * MB).unwrap();
        assert!(m.reserve("b", 80 * MB).is_err());
        let m2 = m.clone();
        let waiter = std::thread::spawn(move || m2.reserve_within("b", 80 * MB, Duration::from_secs(5)).map(|r| r.bytes()));
        std::thread::sleep(Duration::from_millis(100));
        drop(first);
        assert_eq!(waiter.join().unwrap().unwrap(), 80 * MB);
    }

    #[test]
    fn events_are_bounded() {
        let m = manager(100);
        for i in 0..EVENTS_KEPT {
            drop(m.acquire(&format!("m{i}"), MB, || Ok::<_, ModelError>(blob(0))).unwrap());
            m.unload_all();
        }
        let ev = m.events();
        assert_eq!(ev.len(), EVENTS_KEPT);
        let last = format!("m{}", EVENTS_KEPT - 1);
        assert_eq!(ev.last(), Some(&Event::Unload { name: last, reason: "requested" }));
        assert!(
            !ev.iter().any(|e| matches!(e, Event::Load { name, .. } | Event::Unload { name, .. } if name == "m0")),
            "the oldest go first"
        );
    }

    #[test]
    fn idle_models_time_out() {
        let m = manager(100).with_idle_timeout(Duration::from_millis(50));
        drop(m.acquire("a", MB, || Ok::<_, ModelError>(blob(1))).unwrap());
        let held = m.acquire("b", MB, || Ok::<_, ModelError>(blob(1))).unwrap();
        std::thread::sleep(Duration::from_millis(80));
        // The reaper may have been first; either way a goes and b, held, stays.
        m.unload_idle();
        let names: Vec<String> = m.loaded().into_iter().map(|l| l.name).collect();
        assert_eq!(names, vec!["b"]);
        drop(held);
    }
}
