//! Types shared by the request path (`app`) and the control plane: ids, tiers,
//! placements, API-key hashing, the registry's read model and the tenant-data
//! entities. Depends on neither side and links no cloud SDK.

pub mod api_key;
pub mod db;
pub mod entities;
pub mod gate;
pub mod identity;
pub mod keysets;
pub mod metrics;
pub mod registry;
pub mod settings;
pub mod types;
pub mod web;

pub use types::{BackendKind, BackendStatus, Engine, ParseError, Placement, TenantSlug, TenantStatus, Tier};

/// The tenant-data schema version this build was written against (the last
/// migration under `migrations/tenant`). Expand/contract: a build serves
/// backends at this version and at the one before it.
pub const TENANT_SCHEMA_LATEST: i32 = 6;

/// Tenant-schema versions this build can serve.
pub fn supported_tenant_schema() -> std::ops::RangeInclusive<i32> {
    (TENANT_SCHEMA_LATEST - 1).max(1)..=TENANT_SCHEMA_LATEST
}

/// A new time-ordered id (UUID v7) for every row Tenantry creates.
pub fn new_id() -> uuid::Uuid {
    uuid::Uuid::now_v7()
}
