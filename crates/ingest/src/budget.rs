//! Transient memory (decoded image pixels) charged to the same budget as the models.

use mnema_models::manager::ModelManager;
use std::time::Duration;

pub use mnema_models::manager::Reservation;

/// How long a reservation waits for memory held by others (a search holding the embedder, an
/// OCR pool in use) before it is refused.
const WAIT: Duration = Duration::from_secs(60);

/// Charges `bytes` of transient memory for `what` to the model budget, evicting idle models
/// first and waiting up to a minute for models in use; the single place ingest asks for
/// memory that is not a model. Released when the reservation is dropped.
pub fn reserve(models: &ModelManager, what: &str, bytes: u64) -> Result<Reservation, crate::IngestError> {
    let r = models.reserve_within(what, bytes, WAIT).map_err(mnema_extract::ExtractError::from)?;
    tracing::debug!("{what}: {} reserved, {} free", mnema_core::ByteSize(bytes), mnema_core::ByteSize(models.free()));
    Ok(r)
}
