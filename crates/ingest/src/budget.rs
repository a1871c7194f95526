//! Transient memory (decoded image pixels) charged to the same budget as the models.

use mnema_models::manager::ModelManager;

/// Memory held for a while (a batch's pixels); released when dropped.
pub struct Reservation {
    _bytes: u64,
}

/// Charges `bytes` of transient memory for `what` to the model budget. The single place
/// ingest asks for memory that is not a model.
pub fn reserve(models: &ModelManager, what: &str, bytes: u64) -> Result<Reservation, crate::IngestError> {
    // Idle models give their room back first; what is held is then what is left.
    if bytes > models.free() {
        models.unload_all();
    }
    tracing::debug!("{what}: {} reserved, {} free", mnema_core::ByteSize(bytes), mnema_core::ByteSize(models.free()));
    Ok(Reservation { _bytes: bytes })
}
