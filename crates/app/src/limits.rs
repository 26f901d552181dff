//! Per-tenant admission: a token bucket (requests per second and burst, via
//! `governor`) and a cap on requests in flight, both from the tenant's limits
//! (registry data, refreshed when the registry announces a change). Over a
//! limit: 429 with `Retry-After`, before any database work.

use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use moka::sync::Cache;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use uuid::Uuid;

use tenantry_core::registry::KeyOwner;
use tenantry_core::settings::Limits;
use tenantry_core::web::ApiError;

/// One tenant's gate, rebuilt when its limits change.
struct Gate {
    limits: Limits,
    rate: Option<DefaultDirectRateLimiter>,
    in_flight: Option<Arc<Semaphore>>,
}

impl Gate {
    fn new(limits: Limits) -> Self {
        let rate = limits.requests_per_second.and_then(NonZeroU32::new).map(|rps| {
            let burst = limits.burst.and_then(NonZeroU32::new).unwrap_or(rps);
            RateLimiter::direct(Quota::per_second(rps).allow_burst(burst))
        });
        let in_flight = limits.max_concurrent_requests.map(|n| Arc::new(Semaphore::new(n as usize)));
        Self { limits, rate, in_flight }
    }
}

/// Admission for every tenant this process serves.
pub struct Gates {
    gates: Cache<Uuid, Arc<Gate>>,
    rejected_rate: AtomicU64,
    rejected_concurrency: AtomicU64,
}

impl Default for Gates {
    fn default() -> Self {
        Self {
            gates: Cache::builder().max_capacity(100_000).time_to_idle(Duration::from_secs(600)).build(),
            rejected_rate: AtomicU64::new(0),
            rejected_concurrency: AtomicU64::new(0),
        }
    }
}

impl Gates {
    /// Admits one request of `owner`, or says when to retry. The permit (if
    /// the tenant has a concurrency cap) must live as long as the request.
    pub fn admit(&self, owner: &KeyOwner) -> Result<Option<OwnedSemaphorePermit>, ApiError> {
        let mut gate = self.gates.get_with(owner.tenant_id, || Arc::new(Gate::new(owner.limits)));
        if gate.limits != owner.limits {
            gate = Arc::new(Gate::new(owner.limits));
            self.gates.insert(owner.tenant_id, gate.clone());
        }
        if let Some(rate) = &gate.rate
            && let Err(not_until) = rate.check()
        {
            self.rejected_rate.fetch_add(1, Ordering::Relaxed);
            let wait = not_until.wait_time_from(governor::clock::Clock::now(&governor::clock::DefaultClock::default()));
            let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
            return Err(ApiError::too_many_requests(
                "rate_limited",
                format!(
                    "the tenant's limit of {} requests per second is exhausted; retry later",
                    owner.limits.requests_per_second.unwrap_or_default()
                ),
                secs.max(1),
            ));
        }
        match &gate.in_flight {
            None => Ok(None),
            Some(sem) => match sem.clone().try_acquire_owned() {
                Ok(permit) => Ok(Some(permit)),
                Err(_) => {
                    self.rejected_concurrency.fetch_add(1, Ordering::Relaxed);
                    Err(ApiError::too_many_requests(
                        "too_many_concurrent_requests",
                        format!(
                            "the tenant already has {} requests in flight; retry later",
                            owner.limits.max_concurrent_requests.unwrap_or_default()
                        ),
                        1,
                    ))
                }
            },
        }
    }

    /// Rejections so far: (rate, concurrency).
    pub fn rejections(&self) -> (u64, u64) {
        (self.rejected_rate.load(Ordering::Relaxed), self.rejected_concurrency.load(Ordering::Relaxed))
    }
}
