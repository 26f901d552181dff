//! The console's HTML (maud). Every page is complete without JavaScript; the
//! operation page adds live updates through `console.js`.

use chrono::{DateTime, Utc};
use maud::{DOCTYPE, Markup, html};
use serde_json::Value;
use uuid::Uuid;

use super::session::Session;
use crate::backends::BackendView;
use crate::fleet::{BackendRun, MigrationStatus, Outcome};
use crate::moves::plan::MovePlan;
use crate::registry::OperationView;
use crate::tenants::{AuditEntry, KeyView, SettingsView, TenantView};
use crate::usage::model::{TenantUsage, TenantUsageDetail};

/// A console page as a response, with the console's security headers.
pub fn html(status: actix_web::http::StatusCode, markup: maud::Markup) -> actix_web::HttpResponse {
    actix_web::HttpResponse::build(status)
        .content_type(actix_web::http::header::ContentType::html())
        .insert_header((actix_web::http::header::CACHE_CONTROL, "no-store"))
        .insert_header((
            "Content-Security-Policy",
            "default-src 'self'; img-src 'self' data:; style-src 'self'; frame-ancestors 'none'",
        ))
        .insert_header(("X-Frame-Options", "DENY"))
        .insert_header(("Referrer-Policy", "same-origin"))
        .body(markup.into_string())
}

/// Which tab of the navigation is current.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Nav {
    Tenants,
    Backends,
    Estates,
    Migrations,
    Audit,
    None,
}

/// Page frame: header, navigation, the signed-in actor and sign-out.
pub fn page(title: &str, session: Option<&Session>, nav: Nav, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · Tenantry" }
                link rel="stylesheet" href="/console/assets/console.css";
                script src="/console/assets/console.js" defer {}
            }
            body {
                a.skip href="#main" { "Skip to content" }
                header.top {
                    a.brand href="/console" { "Tenantry" }
                    @if let Some(s) = session {
                        nav aria-label="Main" {
                            @for (n, href, label) in [(Nav::Tenants, "/console/tenants", "Tenants"),
                                (Nav::Backends, "/console/backends", "Backends"),
                                (Nav::Estates, "/console/estates", "Estates"),
                                (Nav::Migrations, "/console/migrations", "Migrations"),
                                (Nav::Audit, "/console/audit", "Audit")] {
                                a href=(href) aria-current=[(n == nav).then_some("page")] { (label) }
                            }
                        }
                        form.signout method="post" action="/console/logout" {
                            input type="hidden" name="csrf" value=(s.csrf);
                            span.who { "Signed in as " strong { (s.name()) } }
                            button.link type="submit" { "Sign out" }
                        }
                    }
                }
                main #main { (body) }
            }
        }
    }
}

fn csrf(s: &Session) -> Markup {
    html! { input type="hidden" name="csrf" value=(s.csrf); }
}

pub fn bytes(n: i64) -> String {
    let n = n as f64;
    match n {
        n if n >= 1024.0 * 1024.0 * 1024.0 => format!("{:.1} GiB", n / (1024.0 * 1024.0 * 1024.0)),
        n if n >= 1024.0 * 1024.0 => format!("{:.1} MiB", n / (1024.0 * 1024.0)),
        n if n >= 1024.0 => format!("{:.0} KiB", n / 1024.0),
        n => format!("{n:.0} B"),
    }
}

fn money(v: f64) -> String {
    format!("{v:.2}")
}

fn when(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%d %H:%M:%S UTC").to_string()
}

fn badge(text: &str) -> Markup {
    let class = match text {
        "active" | "succeeded" | "ready" | "ok" | "idle" => "badge good",
        "failed" | "erased" | "missing" | "cancelled" => "badge bad",
        "dedicated" => "badge strong",
        _ => "badge",
    };
    html! { span class=(class) { (text) } }
}

/// `sso`: the operator's identity provider signs staff in (a link to it).
pub fn sign_in(next: &str, error: Option<&str>, name: &str, sso: bool) -> Markup {
    page(
        "Sign in",
        None,
        Nav::None,
        html! {
            section.narrow {
                h1 { "Sign in" }
                @if sso {
                    p { a.button.primary #sso href=(format!("/console/sso/login?next={}", urlencode(next))) {
                        "Sign in with your organisation's account" } }
                    p.muted { "Or, for break-glass access:" }
                }
                p.muted { "Use the admin token this installation printed at start-up (or its configured "
                    code { "control_plane.admin_token" } "). Your actions are recorded as the admin token's; the name you give is kept with the sign-in." }
                @if let Some(e) = error { p.error role="alert" { (e) } }
                form method="post" action="/console/login" {
                    input type="hidden" name="next" value=(next);
                    label for="name" { "Your name" }
                    input #name name="name" required autocomplete="username" value=(name) autofocus;
                    label for="token" { "Admin token" }
                    input #token name="token" type="password" required autocomplete="current-password";
                    button.primary type="submit" { "Sign in" }
                }
            }
        },
    )
}

pub struct TenantFilter<'a> {
    pub q: &'a str,
    pub tier: &'a str,
    pub status: &'a str,
    pub page: u64,
    pub pages: u64,
    pub total: i64,
}

pub fn tenants(s: &Session, rows: &[TenantUsage], heavy: &[Uuid], f: &TenantFilter) -> Markup {
    let link = |page: u64| {
        format!(
            "/console/tenants?q={}&tier={}&status={}&page={page}",
            urlencode(f.q),
            urlencode(f.tier),
            urlencode(f.status)
        )
    };
    page(
        "Tenants",
        Some(s),
        Nav::Tenants,
        html! {
            div.titlebar {
                h1 { "Tenants" }
                a.button.primary href="/console/tenants/new" { "New tenant" }
            }
            form.filters method="get" action="/console/tenants" role="search" {
                label for="q" { "Search" }
                input #q name="q" type="search" value=(f.q) placeholder="slug or name";
                label for="tier" { "Tier" }
                select #tier name="tier" {
                    @for t in ["", "shared", "dedicated"] {
                        option value=(t) selected[f.tier == t] { (if t.is_empty() { "any" } else { t }) }
                    }
                }
                label for="status" { "Status" }
                select #status name="status" {
                    @for t in ["", "active", "provisioning", "suspended", "erasing", "erased", "failed"] {
                        option value=(t) selected[f.status == t] { (if t.is_empty() { "any" } else { t }) }
                    }
                }
                button type="submit" { "Filter" }
            }
            p.muted { (f.total) " tenants" @if f.pages > 1 { " · page " (f.page + 1) " of " (f.pages) } }
            div.scroll {
                table {
                    thead { tr {
                        th { "Tenant" } th { "Tier" } th { "Status" } th { "Backend" } th { "Region" }
                        th.num { "Rows" } th.num { "Storage" } th.num { "Requests / 24 h" } th.num { "Est. monthly cost" }
                    } }
                    tbody {
                        @for t in rows {
                            tr {
                                td {
                                    a href={ "/console/tenants/" (t.slug) } { (t.slug) }
                                    @if heavy.contains(&t.tenant_id) { " " span.badge.warn title="Heavy: see recommendations" { "heavy" } }
                                    br; span.muted { (t.name) }
                                }
                                td { (badge(&t.tier)) }
                                td { (badge(&t.status)) }
                                td { (t.backend.as_deref().unwrap_or("—")) }
                                td { (t.region) }
                                td.num { (t.rows) }
                                td.num { (bytes(t.bytes)) }
                                td.num { (t.requests) }
                                td.num { (money(t.monthly_estimate)) }
                            }
                        }
                        @if rows.is_empty() { tr { td colspan="9" { "No tenant matches." } } }
                    }
                }
            }
            nav.pager aria-label="Pages" {
                @if f.page > 0 { a href=(link(f.page - 1)) rel="prev" { "← Previous" } }
                @if f.page + 1 < f.pages { a href=(link(f.page + 1)) rel="next" { "Next →" } }
            }
        },
    )
}

pub fn new_tenant(s: &Session, error: Option<&str>, regions: &[String]) -> Markup {
    page(
        "New tenant",
        Some(s),
        Nav::Tenants,
        html! {
            section.narrow {
                h1 { "New tenant" }
                @if let Some(e) = error { p.error role="alert" { (e) } }
                form method="post" action="/console/tenants" {
                    (csrf(s))
                    label for="slug" { "Slug" }
                    input #slug name="slug" required pattern="[a-z0-9][a-z0-9-]{1,62}" autocomplete="off";
                    p.hint { "Lower-case letters, digits and dashes; part of URLs, cannot change." }
                    label for="name" { "Name" }
                    input #name name="name" required maxlength="200";
                    label for="tier" { "Tier" }
                    select #tier name="tier" {
                        option value="shared" { "shared (a pool with other tenants)" }
                        option value="dedicated" { "dedicated (its own database)" }
                    }
                    label for="engine" { "Engine (dedicated only)" }
                    select #engine name="engine" { option value="logical" { "logical" } option value="rds" { "rds" } }
                    label for="region" { "Region" }
                    select #region name="region" { @for r in regions { option value=(r) { (r) } } }
                    button.primary type="submit" { "Create tenant" }
                }
            }
        },
    )
}

/// Bars of one series (requests per day, say) as a small inline SVG, with its
/// peak (in `unit`'s words) and the first and last day under it.
fn chart(label: &str, points: &[(String, f64)], unit: fn(f64) -> String) -> Markup {
    let max = points.iter().map(|p| p.1).fold(0.0_f64, f64::max);
    let top = max.max(1.0);
    let n = points.len().max(1) as f64;
    let w = 300.0;
    let h = 60.0;
    let bw = (w / n).max(1.0);
    html! {
        figure.chart {
            figcaption { (label) span.peak { " · peak " (unit(max)) } }
            svg viewBox={ "0 0 " (w) " " (h) } width="100%" height="60" role="img" aria-label=(label) preserveAspectRatio="none" {
                line.baseline x1="0" y1=(h - 0.5) x2=(w) y2=(h - 0.5) {}
                @for (i, (x, v)) in points.iter().enumerate() {
                    @let bh = (v / top * (h - 2.0)).max(if *v > 0.0 { 1.0 } else { 0.0 });
                    rect x=(i as f64 * bw + 0.5) y=(h - bh) width=((bw - 1.0).max(0.5)) height=(bh) { title { (x) ": " (unit(*v)) } }
                }
            }
            @if let (Some(first), Some(last)) = (points.first(), points.last()) {
                div.axis { span { (first.0) } span { (last.0) } }
            } @else {
                div.axis { span { "no usage recorded yet" } }
            }
        }
    }
}

fn count(v: f64) -> String {
    format!("{v:.0}")
}

fn millis(v: f64) -> String {
    format!("{v:.0} ms")
}

fn bytes_f(v: f64) -> String {
    bytes(v as i64)
}

pub struct TenantPage<'a> {
    pub tenant: &'a TenantView,
    pub usage: &'a TenantUsageDetail,
    pub settings: &'a SettingsView,
    pub keys: &'a [KeyView],
    pub operations: &'a [OperationView],
    pub heavy: Option<&'a [String]>,
    pub notice: Option<&'a str>,
    pub error: Option<&'a str>,
    pub new_key: Option<&'a str>,
}

pub fn tenant(s: &Session, p: &TenantPage) -> Markup {
    let t = p.tenant;
    let u = &p.usage.usage;
    let base = format!("/console/tenants/{}", t.slug);
    let live = !matches!(t.status.as_str(), "erased" | "erasing");
    let day = |d: &DateTime<Utc>| d.format("%m-%d").to_string();
    let requests: Vec<(String, f64)> =
        p.usage.series.iter().map(|pt| (day(&pt.period_start), pt.requests as f64)).collect();
    let storage: Vec<(String, f64)> =
        p.usage.series.iter().map(|pt| (day(&pt.period_start), pt.storage_bytes.unwrap_or(0) as f64)).collect();
    let db: Vec<(String, f64)> = p.usage.series.iter().map(|pt| (day(&pt.period_start), pt.db_time_ms)).collect();
    page(
        &t.slug,
        Some(s),
        Nav::Tenants,
        html! {
            div.titlebar {
                h1 { (t.slug) " " span.muted { (t.name) } }
                div { (badge(t.tier.as_str())) " " (badge(t.status.as_str())) }
            }
            @if let Some(n) = p.notice { p.notice role="status" { (n) } }
            @if let Some(e) = p.error { p.error role="alert" { (e) } }
            @if let Some(k) = p.new_key {
                div.notice role="status" {
                    p { strong { "New API key — copy it now, it is not shown again:" } }
                    input.key #new-key readonly value=(k) aria-label="New API key";
                }
            }
            @if let Some(reasons) = p.heavy {
                div.warnbox { strong { "Heavy tenant. " } (reasons.join("; ")) ". Consider promoting it." }
            }
            div.grid {
                section.card {
                    h2 { "Placement" }
                    dl {
                        dt { "Backend" } dd { (t.placement.as_ref().map_or("—", |pl| pl.backend_name.as_str())) }
                        dt { "Epoch" } dd { (t.placement.as_ref().map_or(0, |pl| pl.epoch)) }
                        dt { "Region" } dd { (t.region) }
                        dt { "Id" } dd { code { (t.id) } }
                    }
                }
                section.card {
                    h2 { "Usage, last " (p.usage.window) }
                    dl {
                        dt { "Requests" } dd { (u.requests) " (" (u.client_errors) " client, " (u.server_errors) " server errors)" }
                        dt { "Database time" } dd { (format!("{:.1} s", u.db_time_ms / 1000.0)) }
                        dt { "Rows / storage" } dd { (u.rows) " / " (bytes(u.bytes)) }
                        dt { "Cost" } dd { (money(u.cost.total)) " (est. " (money(u.monthly_estimate)) " a month)" }
                    }
                    (chart("Requests per day", &requests, count))
                    (chart("Database time per day", &db, millis))
                    (chart("Storage", &storage, bytes_f))
                }
            }
            @if live {
                section.card {
                    h2 { "Actions" }
                    div.actions {
                        @if t.tier.as_str() == "shared" {
                            a.button.primary href={ (base) "/promote" } { "Promote to dedicated…" }
                        } @else {
                            a.button href={ (base) "/demote" } { "Demote to shared…" }
                        }
                        a.button href={ (base) "/move" } { "Move…" }
                        a.button href={ (base) "/export" } download { "Export (NDJSON)" }
                        a.button #people-link href={ (base) "/people" } { "People…" }
                        a.button.danger href={ (base) "/erase" } { "Erase…" }
                    }
                }
                section.card {
                    h2 { "Limits and flags" }
                    form method="post" action={ (base) "/settings" } {
                        (csrf(s))
                        p.hint { "Empty: the tier default (shown). Saved changes reach every app process within moments." }
                        div.fields {
                            @for key in tenantry_core::settings::LIMIT_KEYS {
                                @let own = p.settings.settings["limits"][*key].as_u64();
                                @let eff = &p.settings.effective["limits"][*key];
                                div {
                                    label for=(key) { (key.replace('_', " ")) }
                                    input id=(key) name=(key) inputmode="numeric" pattern="[0-9]*"
                                        value=[own] placeholder=(if eff.is_null() { "unlimited".to_string() } else { eff.to_string() });
                                }
                            }
                        }
                        label for="flags" { "Feature flags (JSON object)" }
                        textarea #flags name="flags" rows="2" { (p.settings.settings.get("flags").cloned().unwrap_or_else(|| Value::Object(Default::default()))) }
                        button type="submit" { "Save limits and flags" }
                    }
                }
                section.card {
                    h2 { "API keys" }
                    table {
                        thead { tr { th { "Prefix" } th { "Name" } th { "Created" } th { "State" } th { span.sr { "Action" } } } }
                        tbody {
                            @for k in p.keys {
                                tr {
                                    td { code { (k.prefix) "…" } }
                                    td { (k.name) }
                                    td { (when(k.created_at)) }
                                    td { @if k.revoked_at.is_some() { (badge("revoked")) } @else { (badge("active")) } }
                                    td {
                                        @if k.revoked_at.is_none() {
                                            form.inline method="post" action={ (base) "/keys/" (k.id) "/revoke" } {
                                                (csrf(s))
                                                button.danger type="submit" aria-label={ "Revoke key " (k.prefix) } { "Revoke" }
                                            }
                                        }
                                    }
                                }
                            }
                        }
                    }
                    form.inline method="post" action={ (base) "/keys" } {
                        (csrf(s))
                        label for="key-name" { "New key named" }
                        input #key-name name="name" maxlength="100" placeholder="e.g. production";
                        button type="submit" { "Create key" }
                    }
                }
            }
            section.card {
                h2 { "Operations" }
                (operations_table(p.operations))
            }
            p { a href={ "/console/audit?tenant=" (t.id) } { "Audit trail of " (t.slug) " →" } }
        },
    )
}

fn operations_table(ops: &[OperationView]) -> Markup {
    html! {
        div.scroll { table {
            thead { tr { th { "Operation" } th { "State" } th { "Step" } th { "By" } th { "Started" } } }
            tbody {
                @for o in ops {
                    tr {
                        td { a href={ "/console/operations/" (o.id) } { (o.kind) } }
                        td { (badge(o.state.as_str())) }
                        td { (o.step) }
                        td { (o.actor) }
                        td { (when(o.created_at)) }
                    }
                }
                @if ops.is_empty() { tr { td colspan="5" { "None yet." } } }
            }
        } }
    }
}

/// What an action will do, from its dry run, and the button that does it.
pub struct Confirm<'a> {
    pub title: &'a str,
    pub slug: &'a str,
    pub action: &'a str,
    pub button: &'a str,
    pub plan: Result<MovePlan, String>,
    /// Extra form fields carried to the POST (name, value).
    pub fields: Vec<(&'a str, String)>,
    /// Shown above the plan: a choice that re-plans (engine, target...).
    pub chooser: Option<Markup>,
}

pub fn confirm(s: &Session, c: &Confirm) -> Markup {
    page(
        c.title,
        Some(s),
        Nav::Tenants,
        html! {
            h1 { (c.title) }
            @if let Some(ch) = &c.chooser { (ch) }
            @match &c.plan {
                Err(e) => { p.error role="alert" { "The dry run failed: " (e) } }
                Ok(plan) => {
                    section.card {
                        h2 { "Dry run" }
                        dl {
                            dt { "From" } dd { (plan.source.name) " (" (plan.source.kind) ", " (plan.source.engine) ")" }
                            dt { "To" } dd { (plan.target.name) " (" (plan.target.kind) ", " (plan.target.engine) ")" }
                            dt { "Rows / bytes" } dd #plan-rows { (plan.total_rows) " rows, " (bytes(plan.total_bytes)) }
                            dt { "Expected copy time" } dd { (format!("{:.1} s", plan.estimated_copy_secs)) }
                            dt { "Write pause" } dd { "tens of milliseconds at the cutover; at most " (plan.max_write_pause_ms) " ms, else it is retried" }
                            dt { "Method" } dd { (plan.method) }
                        }
                        h3 { "Tables" }
                        table {
                            thead { tr { th { "Table" } th.num { "Rows" } th.num { "Bytes" } } }
                            tbody { @for t in &plan.tables { tr { td { (t.table) } td.num { (t.rows) } td.num { (bytes(t.bytes)) } } } }
                        }
                        h3 { "Preflight checks" }
                        ul.checks {
                            @for ch in &plan.checks {
                                li class=(if ch.ok { "ok" } else { "fail" }) {
                                    (if ch.ok { "✓ " } else { "✗ " }) strong { (ch.name) } ": " (ch.detail)
                                }
                            }
                        }
                    }
                    form method="post" action=(c.action) {
                        (csrf(s))
                        @for (name, value) in &c.fields { input type="hidden" name=(name) value=(value); }
                        @if plan.ready {
                            button.primary #confirm type="submit" { (c.button) }
                        } @else {
                            p.error { "A check failed: this cannot start until it passes." }
                            button.primary #confirm type="submit" disabled { (c.button) }
                        }
                        " " a href={ "/console/tenants/" (c.slug) } { "Cancel" }
                    }
                }
            }
        },
    )
}

pub fn erase(s: &Session, t: &TenantView, rows: i64, error: Option<&str>) -> Markup {
    page(
        "Erase",
        Some(s),
        Nav::Tenants,
        html! {
            section.narrow {
                h1 { "Erase " (t.slug) }
                @if let Some(e) = error { p.error role="alert" { (e) } }
                div.warnbox {
                    p { "This deletes every row " strong { (t.slug) } " owns (" (rows) " rows measured last), "
                        @if t.tier.as_str() == "dedicated" { "drops its dedicated database, " }
                        "revokes its API keys and answers its requests with 404 from the first moment. "
                        "It cannot be cancelled or undone. The audit trail and a tombstone stay." }
                    p { a href={ "/console/tenants/" (t.slug) "/export" } download { "Export it first" } }
                }
                form method="post" action={ "/console/tenants/" (t.slug) "/erase" } data-confirm-slug=(t.slug) {
                    (csrf(s))
                    label for="confirm" { "Type " strong { (t.slug) } " to confirm" }
                    input #confirm name="confirm" autocomplete="off" required;
                    button.danger #erase type="submit" { "Erase " (t.slug) " for ever" }
                    " " a href={ "/console/tenants/" (t.slug) } { "Cancel" }
                }
            }
        },
    )
}

pub fn operation(s: &Session, o: &OperationView, slug: Option<&str>) -> Markup {
    let p = &o.progress;
    let finished = matches!(o.state.as_str(), "succeeded" | "failed" | "cancelled");
    let steps = p["steps"].as_u64().unwrap_or(0);
    let done = p["step"].as_u64().unwrap_or(0);
    let pct = (done * 100).checked_div(steps).unwrap_or(0);
    let num = |k: &str| p[k].as_f64().map(|v| format!("{v:.0}")).unwrap_or_else(|| "—".into());
    page(
        &format!("{} operation", o.kind),
        Some(s),
        Nav::None,
        html! {
            div.titlebar {
                h1 { (o.kind) " " @if let Some(slug) = slug { a href={ "/console/tenants/" (slug) } { (slug) } } }
                span #op-state data-finished=(finished) { (badge(o.state.as_str())) }
            }
            section.card #op data-progress-url={ "/console/operations/" (o.id) "/progress" } {
                progress #op-bar max="100" value=(pct) aria-labelledby="op-step-label" { (pct) "%" }
                dl.live {
                    dt #op-step-label { "Step" } dd #op-step { (o.step) " (" (done) " of " (steps) ")" }
                    dt { "Rows copied" } dd #op-rows { (num("rows_copied")) " / " (num("rows_total")) }
                    dt { "Replication lag" } dd #op-lag { (num("lag_bytes")) " bytes" }
                    dt { "ETA" } dd #op-eta { "—" }
                    dt { "Measured write pause" } dd #op-pause { @if p["pause_ms"].is_null() { "—" } @else { (num("pause_ms")) " ms" } }
                    dt { "Attempts" } dd #op-attempts { (o.attempts) }
                }
                p.error #op-error role="alert" hidden[o.error.is_none()] { (o.error.as_deref().unwrap_or("")) }
                @if !finished && o.kind != crate::operation::OperationKind::Erase && !crate::registry::past_seal(p) {
                    form #op-cancel method="post" action={ "/console/operations/" (o.id) "/cancel" } {
                        (csrf(s))
                        button.danger type="submit" { "Cancel operation" }
                    }
                }
            }
            dl {
                dt { "Started by" } dd { (o.actor) " at " (when(o.created_at)) }
                @if let Some(f) = o.finished_at { dt { "Finished" } dd { (when(f)) } }
                dt { "Id" } dd { code { (o.id) } }
            }
        },
    )
}

pub struct BackendRow<'a> {
    pub backend: &'a BackendView,
    pub migration: Option<&'a MigrationStatus>,
    pub health: Result<(i64, i64), String>,
}

pub fn backends(s: &Session, rows: &[BackendRow]) -> Markup {
    page(
        "Backends",
        Some(s),
        Nav::Backends,
        html! {
            h1 { "Backends" }
            div.scroll { table {
                thead { tr { th { "Name" } th { "Kind" } th { "Engine" } th { "Region" } th { "Status" } th.num { "Tenants" }
                    th.num { "Size" } th.num { "Connections" } th.num { "Schema" } th { "Health" } } }
                tbody {
                    @for r in rows {
                        @let b = r.backend;
                        tr {
                            td { (b.name) br; span.muted { (b.host) ":" (b.port) "/" (b.database) } }
                            td { (b.kind) } td { (b.engine) } td { (b.region) } td { (badge(b.status.as_str())) }
                            td.num { (b.tenants) }
                            @match &r.health {
                                Ok((size, conns)) => { td.num { (bytes(*size)) } td.num { (conns) } }
                                Err(_) => { td.num { "—" } td.num { "—" } }
                            }
                            td.num { (b.schema_version) @if let Some(m) = r.migration { @if m.migration_state == "failed" { " " (badge("failed")) } } }
                            td { @match &r.health { Ok(_) => { (badge("ok")) } Err(e) => { (badge("missing")) " " span.muted { (e) } } } }
                        }
                    }
                }
            } }
        },
    )
}

pub fn migrations(s: &Session, latest: i32, rows: &[MigrationStatus], run: Option<&[BackendRun]>) -> Markup {
    page(
        "Migrations",
        Some(s),
        Nav::Migrations,
        html! {
            div.titlebar {
                h1 { "Migrations" }
                form.inline method="post" action="/console/migrations/apply" {
                    (csrf(s))
                    label for="concurrency" { "Concurrency" }
                    input #concurrency name="concurrency" value="8" size="3" inputmode="numeric";
                    button.primary type="submit" { "Migrate every backend to v" (latest) }
                }
            }
            @if let Some(run) = run {
                @let failed = run.iter().filter(|r| matches!(r.outcome, Outcome::Failed { .. })).count();
                p class=(if failed > 0 { "error" } else { "notice" }) role="status" {
                    "Fan-out finished: " (run.len() - failed) " backends up to date, " (failed) " failed."
                }
            }
            div.scroll { table {
                thead { tr { th { "Backend" } th { "Kind" } th.num { "Version" } th { "State" } th { "Last run" } th { "Error" } } }
                tbody {
                    @for m in rows {
                        tr {
                            td { (m.name) } td { (m.kind) }
                            td.num { (m.schema_version) @if m.schema_version < latest { " " span.badge.warn { "behind" } } }
                            td { (badge(&m.migration_state)) }
                            td { @if let Some(t) = m.migrated_at { (when(t)) } @if let Some(ms) = m.migration_ms { " (" (ms) " ms)" } }
                            td { (m.migration_error.as_deref().unwrap_or("")) }
                        }
                    }
                }
            } }
        },
    )
}

pub struct AuditFilter<'a> {
    pub tenant: &'a str,
    pub actor: &'a str,
    pub action: &'a str,
    pub next: Option<i64>,
}

pub fn audit(s: &Session, entries: &[AuditEntry], f: &AuditFilter) -> Markup {
    page(
        "Audit",
        Some(s),
        Nav::Audit,
        html! {
            h1 { "Audit log" }
            form.filters method="get" action="/console/audit" role="search" {
                label for="tenant" { "Tenant" } input #tenant name="tenant" value=(f.tenant) placeholder="slug or id";
                label for="actor" { "Actor" } input #actor name="actor" value=(f.actor);
                label for="action" { "Action" } input #action name="action" value=(f.action) placeholder="e.g. tenant or operation";
                button type="submit" { "Filter" }
            }
            div.scroll { table {
                thead { tr { th { "When" } th { "Actor" } th { "Action" } th { "Tenant" } th { "Details" } } }
                tbody {
                    @for e in entries {
                        tr {
                            td { (when(e.at)) } td { (e.actor) } td { code { (e.action) } }
                            td { @if let Some(t) = e.tenant_id { code { (t.to_string()[..8]) } } }
                            td.details { code { (e.details) } }
                        }
                    }
                    @if entries.is_empty() { tr { td colspan="5" { "Nothing matches." } } }
                }
            } }
            @if let Some(c) = f.next {
                nav.pager { a href={ "/console/audit?tenant=" (urlencode(f.tenant)) "&actor=" (urlencode(f.actor)) "&action=" (urlencode(f.action)) "&cursor=" (c) } { "Older →" } }
            }
        },
    )
}

pub fn error(s: Option<&Session>, status: u16, message: &str) -> Markup {
    page(
        "Error",
        s,
        Nav::None,
        html! {
            section.narrow {
                h1 { (if status >= 500 { "Something went wrong" } else { "That did not work" }) }
                p.error role="alert" { (message) }
                p { a href="javascript:history.back()" { "← Back" } " · " a href="/console" { "Tenants" } }
            }
        },
    )
}

/// `application/x-www-form-urlencoded`-style escaping for query values.
pub fn urlencode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => out.push(b as char),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

pub const CSS: &str = include_str!("console.css");
pub const JS: &str = include_str!("console.js");

/// A redirect after a form was handled.
pub fn see_other(location: &str) -> actix_web::HttpResponse {
    actix_web::HttpResponse::SeeOther()
        .insert_header((actix_web::http::header::LOCATION, location.to_string()))
        .finish()
}
