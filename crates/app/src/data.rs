//! Entity-specific reads and writes, all through a [`TenantTx`].

use chrono::{DateTime, Utc};
use sea_orm::sea_query::Expr;
use sea_orm::sea_query::extension::postgres::PgExpr;
use sea_orm::{ColumnTrait, DbErr, QueryFilter, QueryOrder, QuerySelect, Select, Set};
use tenantry_core::entities::TenantScoped;
use uuid::Uuid;

use tenantry_core::entities::{asset_issues, assets, maintenance_schedules};
use tenantry_core::new_id;

use crate::scope::TenantTx;

/// A page of rows in id order (UUID v7, so creation order), and the id to
/// continue after.
pub struct Page<T> {
    pub items: Vec<T>,
    pub next_after: Option<Uuid>,
}

pub fn page<T>(mut rows: Vec<T>, limit: u64, id: impl Fn(&T) -> Uuid) -> Page<T> {
    let more = rows.len() as u64 > limit;
    rows.truncate(limit as usize);
    let next_after = if more { rows.last().map(&id) } else { None };
    Page { items: rows, next_after }
}

/// `%`, `_` and `\` taken literally inside an ILIKE pattern.
fn like_pattern(q: &str) -> String {
    let escaped = q.replace('\\', "\\\\").replace('%', "\\%").replace('_', "\\_");
    format!("%{escaped}%")
}

/// Conditions of `GET /v1/assets`.
pub struct AssetFilter {
    pub status: Option<String>,
    pub q: Option<String>,
    pub after: Option<Uuid>,
    pub limit: u64,
}

/// One row by id.
pub fn by_id<E: TenantScoped>(id: Uuid) -> impl Fn(Select<E>) -> Select<E> {
    move |select| select.filter(E::id_column().eq(id))
}

/// A page of assets (one more row than asked, for [`page`]).
pub fn asset_list(f: AssetFilter) -> impl Fn(Select<assets::Entity>) -> Select<assets::Entity> {
    move |mut select| {
        if let Some(status) = &f.status {
            select = select.filter(assets::Column::Status.eq(status.as_str()));
        }
        if let Some(q) = &f.q {
            let pattern = like_pattern(q);
            select = select.filter(
                sea_orm::Condition::any()
                    .add(Expr::col(assets::Column::Name).ilike(pattern.clone()))
                    .add(Expr::col(assets::Column::Tag).ilike(pattern)),
            );
        }
        if let Some(after) = f.after {
            select = select.filter(assets::Column::Id.gt(after));
        }
        select.order_by_asc(assets::Column::Id).limit(f.limit + 1)
    }
}

pub fn asset_by_tag(tag: String) -> impl Fn(Select<assets::Entity>) -> Select<assets::Entity> {
    move |select| select.filter(assets::Column::Tag.eq(tag.as_str()))
}

pub struct NewAsset {
    pub name: String,
    pub tag: String,
    pub category: String,
    pub location: String,
    pub status: String,
    pub attributes: serde_json::Value,
}

pub async fn create_asset(tx: &TenantTx, a: NewAsset) -> Result<assets::Model, DbErr> {
    let now = Utc::now();
    tx.insert(|tenant_id| assets::ActiveModel {
        tenant_id: Set(tenant_id),
        id: Set(new_id()),
        name: Set(a.name),
        tag: Set(a.tag),
        category: Set(a.category),
        location: Set(a.location),
        status: Set(a.status),
        attributes: Set(a.attributes),
        created_at: Set(now),
        updated_at: Set(now),
    })
    .await
}

pub async fn schedules_of_asset(tx: &TenantTx, asset_id: Uuid) -> Result<Vec<maintenance_schedules::Model>, DbErr> {
    let select = tx
        .select::<maintenance_schedules::Entity>()
        .filter(maintenance_schedules::Column::AssetId.eq(asset_id))
        .order_by_asc(maintenance_schedules::Column::NextDueAt)
        .limit(1000);
    tx.all(select).await
}

pub fn schedules_due(
    before: DateTime<Utc>,
    limit: u64,
) -> impl Fn(Select<maintenance_schedules::Entity>) -> Select<maintenance_schedules::Entity> {
    move |select| {
        select
            .filter(maintenance_schedules::Column::NextDueAt.lt(before))
            .order_by_asc(maintenance_schedules::Column::NextDueAt)
            .order_by_asc(maintenance_schedules::Column::Id)
            .limit(limit)
    }
}

pub struct NewSchedule {
    pub asset_id: Uuid,
    pub title: String,
    pub interval_days: i32,
    pub next_due_at: DateTime<Utc>,
}

pub async fn create_schedule(tx: &TenantTx, s: NewSchedule) -> Result<maintenance_schedules::Model, DbErr> {
    let now = Utc::now();
    tx.insert(|tenant_id| maintenance_schedules::ActiveModel {
        tenant_id: Set(tenant_id),
        id: Set(new_id()),
        asset_id: Set(s.asset_id),
        title: Set(s.title),
        interval_days: Set(s.interval_days),
        next_due_at: Set(s.next_due_at),
        last_done_at: Set(None),
        created_at: Set(now),
        updated_at: Set(now),
    })
    .await
}

/// A page of issues (one more row than asked, for [`page`]).
pub fn issue_list(
    status: Option<String>,
    after: Option<Uuid>,
    limit: u64,
) -> impl Fn(Select<asset_issues::Entity>) -> Select<asset_issues::Entity> {
    move |mut select| {
        if let Some(status) = &status {
            select = select.filter(asset_issues::Column::Status.eq(status.as_str()));
        }
        if let Some(after) = after {
            select = select.filter(asset_issues::Column::Id.gt(after));
        }
        select.order_by_asc(asset_issues::Column::Id).limit(limit + 1)
    }
}

pub struct NewIssue {
    pub asset_id: Uuid,
    pub title: String,
    pub description: String,
    pub status: String,
    pub priority: String,
}

pub async fn create_issue(tx: &TenantTx, i: NewIssue) -> Result<asset_issues::Model, DbErr> {
    let now = Utc::now();
    tx.insert(|tenant_id| asset_issues::ActiveModel {
        tenant_id: Set(tenant_id),
        id: Set(new_id()),
        asset_id: Set(i.asset_id),
        title: Set(i.title),
        description: Set(i.description),
        status: Set(i.status),
        priority: Set(i.priority),
        created_at: Set(now),
        updated_at: Set(now),
    })
    .await
}
