//! Usage's vocabulary: windows, costs, per-tenant usage, shares. Plain data.

use std::time::Duration;

use chrono::{DateTime, Utc};
use sea_orm::FromQueryResult;
use serde::Serialize;
use serde_json::Value;
use uuid::Uuid;

use crate::config::Price;
use crate::error::Error;

/// Hours in an average month, for prorating monthly prices.
pub(crate) const HOURS_PER_MONTH: f64 = 730.0;
const GIB: f64 = (1u64 << 30) as f64;

/// A window of usage: `1h`..`48h` in hours (hourly rollups), `1d`..`90d` in days.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Window {
    pub hours: i64,
}

impl Window {
    pub fn parse(s: &str) -> Result<Self, Error> {
        let bad = || {
            Error::invalid(
                "invalid_window",
                format!("window `{s}` is not a number of hours (1h-48h) or days (1d-90d), e.g. `24h` or `7d`"),
            )
        };
        let (n, unit) = match (s.strip_suffix('h'), s.strip_suffix('d')) {
            (Some(n), _) => (n, "h"),
            (_, Some(n)) => (n, "d"),
            _ => return Err(bad()),
        };
        let n: i64 = n.parse().map_err(|_| bad())?;
        let hours = match unit {
            "h" if (1..=48).contains(&n) => n,
            "d" if (1..=90).contains(&n) => n * 24,
            _ => return Err(bad()),
        };
        Ok(Self { hours })
    }

    /// Hourly rollups cover short windows, daily ones the rest.
    pub(crate) fn granularity(self) -> &'static str {
        if self.hours <= 48 { "hour" } else { "day" }
    }

    /// First period start inside the window (the current period counts as one).
    pub(crate) fn since(self, now: DateTime<Utc>) -> DateTime<Utc> {
        use chrono::{DurationRound, TimeDelta};
        if self.granularity() == "hour" {
            let this = now.duration_trunc(TimeDelta::hours(1)).unwrap_or(now);
            this - TimeDelta::hours(self.hours - 1)
        } else {
            let this = now.duration_trunc(TimeDelta::days(1)).unwrap_or(now);
            this - TimeDelta::days(self.hours / 24 - 1)
        }
    }

    pub fn label(self) -> String {
        if self.hours <= 48 { format!("{}h", self.hours) } else { format!("{}d", self.hours / 24) }
    }
}

/// Money for one tenant over a window, by component.
#[derive(Debug, Clone, Default, Serialize, utoipa::ToSchema)]
pub struct Cost {
    pub base: f64,
    pub requests: f64,
    pub db_time: f64,
    pub storage: f64,
    pub total: f64,
}

impl Cost {
    pub(crate) fn new(price: &Price, hours: f64, requests: i64, db_time_us: i64, bytes: i64) -> Self {
        let round = |v: f64| (v * 10_000.0).round() / 10_000.0;
        let base = price.base_per_month * hours / HOURS_PER_MONTH;
        let req = requests as f64 / 1e6 * price.per_million_requests;
        let db = db_time_us as f64 / 3.6e9 * price.per_db_hour;
        let storage = bytes as f64 / GIB * price.per_gb_month * hours / HOURS_PER_MONTH;
        Cost {
            base: round(base),
            requests: round(req),
            db_time: round(db),
            storage: round(storage),
            total: round(base + req + db + storage),
        }
    }
}

/// One tenant's usage over a window.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct TenantUsage {
    pub tenant_id: Uuid,
    pub slug: String,
    pub name: String,
    pub region: String,
    pub tier: String,
    pub status: String,
    pub backend: Option<String>,
    pub engine: Option<String>,
    pub requests: i64,
    pub client_errors: i64,
    pub server_errors: i64,
    /// Time requests held a database connection.
    pub db_time_ms: f64,
    /// Latest measurement (see `storage_measured_at`).
    pub rows: i64,
    pub bytes: i64,
    pub storage_measured_at: Option<DateTime<Utc>>,
    /// Over the window.
    pub cost: Cost,
    /// A month at the window's rate: base + storage for a month, requests and
    /// database time extrapolated.
    pub monthly_estimate: f64,
}

/// `GET /v1/usage`.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct UsageReport {
    pub window: String,
    pub since: DateTime<Utc>,
    pub sort: String,
    pub tenants: Vec<TenantUsage>,
}

/// One period of a tenant's usage.
#[derive(Debug, Clone, Serialize, FromQueryResult, utoipa::ToSchema)]
pub struct UsagePoint {
    pub period_start: DateTime<Utc>,
    pub requests: i64,
    pub client_errors: i64,
    pub server_errors: i64,
    pub db_time_ms: f64,
    pub rows: Option<i64>,
    pub storage_bytes: Option<i64>,
}

/// `GET /v1/tenants/{id}/usage`.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct TenantUsageDetail {
    pub window: String,
    pub granularity: String,
    pub since: DateTime<Utc>,
    #[serde(flatten)]
    pub usage: TenantUsage,
    pub price: Option<Price>,
    /// Rows and bytes per table at the latest measurement.
    #[schema(value_type = Object)]
    pub tables: Value,
    pub series: Vec<UsagePoint>,
}

/// What `GET /v1/usage` sorts by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum UsageSort {
    Cost,
    Requests,
    DbTime,
    Bytes,
    Rows,
    Errors,
}

impl UsageSort {
    pub(crate) fn key(self, u: &TenantUsage) -> f64 {
        match self {
            UsageSort::Cost => u.cost.total,
            UsageSort::Requests => u.requests as f64,
            UsageSort::DbTime => u.db_time_ms,
            UsageSort::Bytes => u.bytes as f64,
            UsageSort::Rows => u.rows as f64,
            UsageSort::Errors => (u.client_errors + u.server_errors) as f64,
        }
    }

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            UsageSort::Cost => "cost",
            UsageSort::Requests => "requests",
            UsageSort::DbTime => "db_time",
            UsageSort::Bytes => "bytes",
            UsageSort::Rows => "rows",
            UsageSort::Errors => "errors",
        }
    }
}

/// The recommendation window and the tenants over a threshold in it: usage,
/// shares and the reasons in words, heaviest first.
pub type HeavyTenants = (Window, Vec<(TenantUsage, Shares, Vec<String>)>);

/// How stale the console's "heavy" badges may be.
pub const HEAVY_TTL: Duration = Duration::from_secs(15);

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Shares {
    pub rows: f64,
    pub bytes: f64,
    pub db_time: f64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_parse_and_bound() {
        assert_eq!(Window::parse("24h").unwrap().hours, 24);
        assert_eq!(Window::parse("7d").unwrap().hours, 168);
        assert_eq!(Window::parse("7d").unwrap().granularity(), "day");
        assert_eq!(Window::parse("48h").unwrap().granularity(), "hour");
        for bad in ["", "h", "0h", "49h", "91d", "7w", "-1d", "1.5h"] {
            assert!(Window::parse(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn cost_prorates_base_and_storage() {
        let p = Price {
            tier: "dedicated".into(),
            engine: "*".into(),
            base_per_month: 73.0,
            per_million_requests: 1.0,
            per_db_hour: 2.0,
            per_gb_month: 0.73,
        };
        // 10 hours: base 1.0, 2M requests 2.0, 1.5 h db 3.0, 10 GiB for 10 h 0.1.
        let c = Cost::new(&p, 10.0, 2_000_000, 5_400_000_000, 10 << 30);
        assert_eq!((c.base, c.requests, c.db_time, c.storage, c.total), (1.0, 2.0, 3.0, 0.1, 6.1));
    }
}
