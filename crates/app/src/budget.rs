//! The connection budget's unit: a [`Slot`] is one request's claim on one of
//! the process's `max_connections_total` connections, held while the request
//! uses its tenant's backend. Releasing it meters the time it was held as the
//! tenant's database time.

use std::sync::Arc;
use std::time::Instant;

use tokio::sync::OwnedSemaphorePermit;
use uuid::Uuid;

use crate::usage::UsageMeter;

/// A slot of the connection budget held by one request.
pub struct Slot {
    _permit: OwnedSemaphorePermit,
    tenant: Uuid,
    started: Instant,
    usage: Arc<UsageMeter>,
}

impl Slot {
    /// A slot from a permit of the budget's semaphore, metered for `tenant`.
    pub(crate) fn new(permit: OwnedSemaphorePermit, tenant: Uuid, usage: Arc<UsageMeter>) -> Self {
        Slot { _permit: permit, tenant, started: Instant::now(), usage }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.usage.db_time(self.tenant, self.started.elapsed());
    }
}
