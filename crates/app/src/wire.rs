//! What the app API answers, as JSON: assets, schedules, issues, pages.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use tenantry_core::Tier;
use tenantry_core::entities::{asset_issues, assets, maintenance_schedules};

#[derive(Debug, Clone, Copy, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum AssetStatus {
    Active,
    InRepair,
    Retired,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum IssueStatus {
    Open,
    InProgress,
    Resolved,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Priority {
    Low,
    Medium,
    High,
    Critical,
}

pub(crate) fn wire<T: Serialize>(v: T) -> String {
    serde_json::to_value(v).ok().and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default()
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct Asset {
    pub id: Uuid,
    pub name: String,
    pub tag: String,
    pub category: String,
    pub location: String,
    pub status: String,
    #[schema(value_type = Object)]
    pub attributes: serde_json::Value,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl From<assets::Model> for Asset {
    fn from(m: assets::Model) -> Self {
        Asset {
            id: m.id,
            name: m.name,
            tag: m.tag,
            category: m.category,
            location: m.location,
            status: m.status,
            attributes: m.attributes,
            created_at: m.created_at,
            updated_at: m.updated_at,
        }
    }
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct Schedule {
    pub id: Uuid,
    pub asset_id: Uuid,
    pub title: String,
    pub interval_days: i32,
    pub next_due_at: DateTime<Utc>,
    pub last_done_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl From<maintenance_schedules::Model> for Schedule {
    fn from(m: maintenance_schedules::Model) -> Self {
        Schedule {
            id: m.id,
            asset_id: m.asset_id,
            title: m.title,
            interval_days: m.interval_days,
            next_due_at: m.next_due_at,
            last_done_at: m.last_done_at,
            created_at: m.created_at,
            updated_at: m.updated_at,
        }
    }
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct Issue {
    pub id: Uuid,
    pub asset_id: Uuid,
    pub title: String,
    pub description: String,
    pub status: String,
    pub priority: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl From<asset_issues::Model> for Issue {
    fn from(m: asset_issues::Model) -> Self {
        Issue {
            id: m.id,
            asset_id: m.asset_id,
            title: m.title,
            description: m.description,
            status: m.status,
            priority: m.priority,
            created_at: m.created_at,
            updated_at: m.updated_at,
        }
    }
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct AssetPage {
    pub assets: Vec<Asset>,
    pub next_cursor: Option<String>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct IssuePage {
    pub issues: Vec<Issue>,
    pub next_cursor: Option<String>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct ScheduleList {
    pub maintenance_schedules: Vec<Schedule>,
}

/// `GET /v1/me`: who is asking, for which tenant, with which role.
#[derive(Serialize, utoipa::ToSchema)]
pub struct Me {
    pub tenant_id: Uuid,
    pub tenant: String,
    /// `api-key`, or the subject (`sub`) of the identity provider's token.
    pub subject: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub issuer: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub role: tenantry_core::identity::Role,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct WhoAmI {
    pub id: Uuid,
    pub slug: String,
    pub tier: Tier,
}
