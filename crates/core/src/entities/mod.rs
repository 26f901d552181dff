//! Tenant-data entities, one file per table. Every table leads its key with
//! `tenant_id`; [`TenantScoped`] names that column so the data-access layer can
//! add the tenant filter in one place.

pub mod asset_issues;
pub mod assets;
pub mod maintenance_overdue;
pub mod maintenance_schedules;

use sea_orm::EntityTrait;

/// An entity whose rows belong to one tenant.
pub trait TenantScoped: EntityTrait {
    /// The `tenant_id` column.
    fn tenant_column() -> Self::Column;
    /// The `id` column (second half of the primary key).
    fn id_column() -> Self::Column;
}

/// The tenant-data tables the app API serves, in foreign-key order (parents
/// first). Jobs' tables (`maintenance_overdue`) and the move sentinels also
/// carry tenant_id with RLS forced; moves, exports and erasure find every such
/// table from the catalog, never from this list.
pub const TENANT_TABLES: &[&str] = &["assets", "maintenance_schedules", "asset_issues"];

macro_rules! tenant_scoped {
    ($module:ident) => {
        impl TenantScoped for $module::Entity {
            fn tenant_column() -> Self::Column {
                $module::Column::TenantId
            }
            fn id_column() -> Self::Column {
                $module::Column::Id
            }
        }
    };
}
tenant_scoped!(assets);
tenant_scoped!(maintenance_schedules);
tenant_scoped!(asset_issues);
tenant_scoped!(maintenance_overdue);
