//! The console's legacy estates: every registered estate, and per estate its
//! sources (schemas or databases) with how each table maps, sizes, problems
//! and state, and the dry run of adopting one.

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, web};
use maud::{Markup, html};
use serde::Deserialize;
use uuid::Uuid;

use tenantry_core::Tier;

use super::session::{ConsoleError, Session};
use super::views::{Nav, bytes, html, page, see_other};
use crate::estates::EstateView;
use crate::estates::request::{AdoptRequest, ReleaseRequest, RevertRequest, slug_of};
use crate::estates::sources::{AdoptionPlan, Source, SourceState};
use crate::plane::ControlPlane;

type Cp = web::Data<ControlPlane>;

/// `GET /console/estates`
pub async fn list(cp: Cp, s: Session) -> Result<HttpResponse, ConsoleError> {
    let estates = cp.estates().await?;
    Ok(html(StatusCode::OK, list_page(&s, &estates)))
}

/// `GET /console/estates/{id}`
pub async fn one(cp: Cp, s: Session, id: web::Path<Uuid>) -> Result<HttpResponse, ConsoleError> {
    let estate = cp.estate(*id).await?.view;
    let sources = cp.estate_sources(*id).await?;
    Ok(html(StatusCode::OK, estate_page(&s, &estate, &sources)))
}

#[derive(Deserialize)]
pub struct PlanQuery {
    source: String,
    #[serde(default = "shared")]
    tier: Tier,
}

fn shared() -> Tier {
    Tier::Shared
}

/// `GET /console/estates/{id}/plan?source=..&tier=..`: the dry run, and the
/// adopt action behind it.
pub async fn plan(
    cp: Cp,
    s: Session,
    id: web::Path<Uuid>,
    q: web::Query<PlanQuery>,
) -> Result<HttpResponse, ConsoleError> {
    let estate = cp.estate(*id).await?.view;
    let plan = cp.adoption_plan(*id, &q.source, q.tier, None).await?;
    Ok(html(StatusCode::OK, plan_page(&s, &estate, &plan)))
}

#[derive(Deserialize)]
pub struct SourceForm {
    csrf: String,
    source: String,
    tier: Option<Tier>,
    slug: Option<String>,
    drop: Option<String>,
}

/// `POST /console/estates/{id}/adopt`: queues the adoption, shows its progress.
pub async fn adopt(
    cp: Cp,
    s: Session,
    id: web::Path<Uuid>,
    form: web::Form<SourceForm>,
) -> Result<HttpResponse, ConsoleError> {
    s.check(&form.csrf)?;
    let estate = cp.estate(*id).await?.view;
    let req = AdoptRequest {
        source: form.source.clone(),
        slug: form.slug.clone().unwrap_or_else(|| slug_of(&estate.pattern, &form.source)),
        name: None,
        tier: form.tier.unwrap_or(Tier::Shared),
        target_backend_id: None,
        engine: None,
        region: None,
    };
    let op = cp.adopt(&s.actor, *id, req).await?;
    Ok(see_other(&format!("/console/operations/{}", op.id)))
}

/// `POST /console/estates/{id}/revert`: the way back, with its progress.
pub async fn revert(
    cp: Cp,
    s: Session,
    id: web::Path<Uuid>,
    form: web::Form<SourceForm>,
) -> Result<HttpResponse, ConsoleError> {
    s.check(&form.csrf)?;
    let op = cp.revert_source(&s.actor, *id, RevertRequest { source: form.source.clone() }).await?;
    Ok(see_other(&format!("/console/operations/{}", op.id)))
}

/// `POST /console/estates/{id}/release`: ends the way back (`drop=on`: drops
/// the legacy schema or database).
pub async fn release(
    cp: Cp,
    s: Session,
    id: web::Path<Uuid>,
    form: web::Form<SourceForm>,
) -> Result<HttpResponse, ConsoleError> {
    s.check(&form.csrf)?;
    let req = ReleaseRequest { source: form.source.clone(), drop: form.drop.as_deref() == Some("on") };
    if req.drop {
        s.needs(crate::staff::StaffRole::Admin)?;
    }
    cp.release_source(&s.actor, *id, req).await?;
    Ok(see_other(&format!("/console/estates/{id}")))
}

fn list_page(s: &Session, estates: &[EstateView]) -> Markup {
    page(
        "Estates",
        Some(s),
        Nav::Estates,
        html! {
            h1 { "Legacy estates" }
            p.muted { "Schema- or database-per-tenant PostgreSQL to adopt tenants from. Register one with "
                code { "POST /v1/estates" } " or " code { "tenantry estates add" } "." }
            @if estates.is_empty() { p { "No estate registered." } } @else {
                div.scroll { table {
                    thead { tr { th { "Name" } th { "Where" } th { "Layout" } th { "Pattern" } } }
                    tbody { @for e in estates { tr {
                        td { a href={ "/console/estates/" (e.id) } { (e.name) } }
                        td { (e.user) "@" (e.host) ":" (e.port) "/" (e.database) }
                        td { (layout(e)) } td { code { (e.pattern) } }
                    } } }
                } }
            }
        },
    )
}

fn layout(e: &EstateView) -> &'static str {
    match e.layout {
        crate::estates::Layout::SchemaPerTenant => "schema per tenant",
        crate::estates::Layout::DatabasePerTenant => "database per tenant",
    }
}

fn estate_page(s: &Session, e: &EstateView, sources: &[Source]) -> Markup {
    page(
        &e.name,
        Some(s),
        Nav::Estates,
        html! {
            h1 { (e.name) }
            p.muted { (layout(e)) ", " code { (e.pattern) } " on " (e.host) ":" (e.port) "/" (e.database) }
            @for src in sources {
                section.card {
                    h2 { (src.name) " " span.badge { (format!("{:?}", src.state).to_lowercase()) } }
                    div.scroll { table {
                        thead { tr { th { "Legacy table" } th { "Tenantry table" } th.num { "Rows" } th.num { "Size" } th { "Key" } } }
                        tbody { @for t in &src.tables { tr {
                            td { (t.legacy) } td { (t.target.as_deref().unwrap_or("—")) }
                            td.num { (t.rows) } td.num { (bytes(t.bytes)) }
                            td { (t.primary_key.as_deref().unwrap_or("—")) }
                        } } }
                    } }
                    @if src.state == SourceState::Adopted {
                        p { "Adopted as tenant " @if let Some(t) = src.tenant_id { a href={ "/console/tenants/" (t) } { (t) } } "." }
                        form.inline method="post" action={ "/console/estates/" (e.id) "/revert" } {
                            input type="hidden" name="csrf" value=(s.csrf);
                            input type="hidden" name="source" value=(src.name);
                            button type="submit" { "Revert to the legacy source" }
                        }
                        form.inline method="post" action={ "/console/estates/" (e.id) "/release" } {
                            input type="hidden" name="csrf" value=(s.csrf);
                            input type="hidden" name="source" value=(src.name);
                            label { input type="checkbox" name="drop"; " drop the legacy data" }
                            button type="submit" { "Release" }
                        }
                    } @else if src.problems.is_empty() {
                        p { "Every table and column has a place. "
                            a href={ "/console/estates/" (e.id) "/plan?source=" (super::views::urlencode(&src.name)) } { "Dry run" } }
                    } @else {
                        ul.problems { @for p in &src.problems { li { (p) } } }
                    }
                }
            }
        },
    )
}

fn plan_page(s: &Session, e: &EstateView, p: &AdoptionPlan) -> Markup {
    page(
        "Adoption dry run",
        Some(s),
        Nav::Estates,
        html! {
            h1 { "Adopting " (p.source) " from " (e.name) }
            p { "Target: " strong { (p.target) } " (" (p.tier) "). Copy about " (p.estimated_copy_secs) " s; write pause about "
                (p.expected_pause_ms) " ms on the legacy source." }
            h2 { "Preflight checks" }
            ul { @for c in &p.checks { li { (if c.ok { "✓ " } else { "✗ " }) strong { (c.name) } ": " (c.detail) } } }
            p { @if p.ready { "Ready." } @else { "Not ready: fix what the checks name first." } }
            form.inline method="get" {
                input type="hidden" name="source" value=(p.source);
                label for="tier" { "Tier" }
                select #tier name="tier" {
                    option value="shared" selected[p.tier == Tier::Shared] { "shared pool" }
                    option value="dedicated" selected[p.tier == Tier::Dedicated] { "dedicated database" }
                }
                button type="submit" { "Re-plan" }
            }
            @if p.ready {
                form method="post" action={ "/console/estates/" (e.id) "/adopt" } {
                    input type="hidden" name="csrf" value=(s.csrf);
                    input type="hidden" name="source" value=(p.source);
                    input type="hidden" name="tier" value=(p.tier.as_str());
                    label for="slug" { "Tenant slug" }
                    input #slug name="slug" value=(slug_of(&e.pattern, &p.source)) required pattern="[a-z0-9][a-z0-9-]{1,62}";
                    button type="submit" { "Adopt now" }
                }
            }
        },
    )
}
