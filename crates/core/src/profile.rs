//! Stage markers for the profiler. Library code wraps its phases in `let _s = stage("embed");`
//! and an observer, when one is installed (by `mnema profile`), measures each phase. With no
//! observer a marker costs one atomic load.
//!
//! Stage names: `decode`, `ocr`, `asr`, `embed`, `store`, `search`, `load-model`.

use std::sync::OnceLock;

/// Receives stage boundaries (on the thread that runs the stage).
pub trait Observer: Send + Sync {
    /// A stage starts.
    fn enter(&self, name: &'static str);
    /// The stage started last on this thread ends.
    fn exit(&self, name: &'static str);
}

static OBSERVER: OnceLock<Box<dyn Observer>> = OnceLock::new();

/// Installs the process-wide observer; false if one was installed already.
pub fn install(o: Box<dyn Observer>) -> bool {
    OBSERVER.set(o).is_ok()
}

/// Marks a stage until the returned guard is dropped.
#[must_use = "the stage ends when this guard is dropped"]
pub fn stage(name: &'static str) -> Stage {
    if let Some(o) = OBSERVER.get() {
        o.enter(name);
    }
    Stage { name }
}

/// A running stage; ends on drop.
pub struct Stage {
    name: &'static str,
}

impl Drop for Stage {
    fn drop(&mut self) {
        if let Some(o) = OBSERVER.get() {
            o.exit(self.name);
        }
    }
}
