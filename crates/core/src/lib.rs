//! Types shared by the request path (`app`) and the control plane: ids, tiers,
//! placements, API-key hashing, the registry's read model and the tenant-data
//! entities. Depends on neither side and links no cloud SDK.

pub mod api_key;
pub mod db;
pub mod entities;
pub mod registry;
pub mod types;
pub mod web;

pub use types::{BackendKind, BackendStatus, Engine, ParseError, Placement, TenantSlug, TenantStatus, Tier};

/// A new time-ordered id (UUID v7) for every row Tenantry creates.
pub fn new_id() -> uuid::Uuid {
    uuid::Uuid::now_v7()
}
