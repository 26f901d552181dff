//! The admin console: server-rendered HTML under `/console` on the admin
//! listener, from the same binary, every asset embedded (no CDN, works
//! offline). Sign-in with the admin token opens a registry-backed session
//! (cookie HttpOnly, SameSite=Strict, Secure over TLS); every change is a POST
//! carrying the session's CSRF token and is audited under the signed-in actor
//! (the person, or `admin-token (console)`). Actions call the same control-plane methods as the API;
//! each move or erasure first shows its dry run and asks for confirmation.

mod estates;
mod people;
pub mod session;
mod sso;
mod views;

use std::collections::BTreeMap;
use std::time::Duration;

use actix_web::cookie::{Cookie, SameSite};
use actix_web::http::StatusCode;
use actix_web::http::header;
use actix_web::{HttpRequest, HttpResponse, ResponseError, web};
use futures::StreamExt;
use serde::Deserialize;
use serde_json::{Value, json};
use uuid::Uuid;

use tenantry_core::{BackendKind, BackendStatus, Engine, TenantSlug, Tier};

use crate::operation::OperationKind;

use crate::error::Error;
use crate::plane::ControlPlane;
use crate::tenants::NewTenant;
use session::{COOKIE, ConsoleError, Next, Session, safe_next, session_cookie};
use views::html;

type Cp = web::Data<ControlPlane>;
type Page = Result<HttpResponse, ConsoleError>;

/// Tenants per page of the tenant list.
const PER_PAGE: u64 = 50;
/// Longest a backend's health probe may take on the backends page.
const HEALTH_TIMEOUT: Duration = Duration::from_secs(2);

impl ResponseError for ConsoleError {
    fn status_code(&self) -> StatusCode {
        match self {
            ConsoleError::SignIn { .. } => StatusCode::SEE_OTHER,
            ConsoleError::Csrf => StatusCode::FORBIDDEN,
            ConsoleError::Status(s, _) => *s,
            ConsoleError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn error_response(&self) -> HttpResponse {
        match self {
            ConsoleError::SignIn { next } => see_other(&format!("/console/login?next={}", views::urlencode(next))),
            ConsoleError::Internal(e) => {
                tracing::error!(error = %e, "console failed");
                html(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    views::error(None, 500, "an unexpected error; it has been logged"),
                )
            }
            other => html(other.status_code(), views::error(None, other.status_code().as_u16(), &other.to_string())),
        }
    }
}

fn ok(markup: maud::Markup) -> Page {
    Ok(html(StatusCode::OK, markup))
}

use views::see_other;

async fn login_form(cp: Cp, q: web::Query<Next>) -> Page {
    ok(views::sign_in(safe_next(q.next.as_deref().unwrap_or("/console")), None, "", sso::offered(&cp)))
}

#[derive(Deserialize)]
struct SignIn {
    token: String,
    name: String,
    next: Option<String>,
}

async fn login(cp: Cp, req: HttpRequest, form: web::Form<SignIn>) -> Page {
    let next = safe_next(form.next.as_deref().unwrap_or("/console")).to_string();
    let client = req.peer_addr().map(|a| a.ip());
    match cp.console_sign_in(&form.token, form.name.trim(), client).await {
        Ok((cookie, _)) => {
            let cookie = session_cookie(&cp, &req, cookie);
            let mut res = see_other(&next);
            res.add_cookie(&cookie).map_err(|e| ConsoleError::Internal(e.to_string()))?;
            Ok(res)
        }
        Err(Error::Invalid { message, .. }) => Ok(html(
            StatusCode::UNAUTHORIZED,
            views::sign_in(&next, Some(&message), form.name.trim(), sso::offered(&cp)),
        )),
        Err(Error::Busy { message, .. }) => Ok(html(
            StatusCode::TOO_MANY_REQUESTS,
            views::sign_in(&next, Some(&message), form.name.trim(), sso::offered(&cp)),
        )),
        Err(e) => Err(e.into()),
    }
}

#[derive(Deserialize)]
struct CsrfOnly {
    csrf: String,
}

async fn logout(cp: Cp, s: Session, form: web::Form<CsrfOnly>) -> Page {
    s.check(&form.csrf)?;
    cp.console_sign_out(&s).await?;
    let mut res = see_other("/console/login");
    let mut gone = Cookie::build(COOKIE, "").path("/console").http_only(true).same_site(SameSite::Strict).finish();
    gone.make_removal();
    res.add_cookie(&gone).map_err(|e| ConsoleError::Internal(e.to_string()))?;
    Ok(res)
}

async fn home(_s: Session) -> HttpResponse {
    see_other("/console/tenants")
}

async fn asset(path: web::Path<String>) -> HttpResponse {
    let (body, kind) = match path.as_str() {
        "console.css" => (views::CSS, "text/css; charset=utf-8"),
        "console.js" => (views::JS, "text/javascript; charset=utf-8"),
        _ => return HttpResponse::NotFound().finish(),
    };
    HttpResponse::Ok().content_type(kind).insert_header((header::CACHE_CONTROL, "public, max-age=3600")).body(body)
}

#[derive(Deserialize)]
struct TenantQuery {
    q: Option<String>,
    tier: Option<String>,
    status: Option<String>,
    page: Option<u64>,
}

async fn tenants(cp: Cp, s: Session, q: web::Query<TenantQuery>) -> Page {
    let (query, tier, status) =
        (q.q.as_deref().unwrap_or("").trim(), q.tier.as_deref().unwrap_or(""), q.status.as_deref().unwrap_or(""));
    let page = q.page.unwrap_or(0).min(100_000);
    let (rows, total) = cp.tenant_page(query, tier, status, page, PER_PAGE).await?;
    let heavy: Vec<Uuid> = cp.heavy_tenants_cached().await?.1.iter().map(|h| h.0.tenant_id).collect();
    let pages = (total.max(0) as u64).div_ceil(PER_PAGE);
    ok(views::tenants(&s, &rows, &heavy, &views::TenantFilter { q: query, tier, status, page, pages, total }))
}

/// The default region first, then where each configured engine provisions.
async fn regions(cp: &ControlPlane) -> Vec<String> {
    let mut r = vec![cp.config().default_region.clone()];
    for region in [Engine::Logical, Engine::Rds].into_iter().filter_map(|e| cp.dedicated_region(e)) {
        if !r.contains(&region) {
            r.push(region);
        }
    }
    r
}

async fn new_tenant(cp: Cp, s: Session) -> Page {
    ok(views::new_tenant(&s, None, &regions(&cp).await))
}

#[derive(Deserialize)]
struct CreateForm {
    csrf: String,
    slug: String,
    name: String,
    tier: String,
    engine: Option<String>,
    region: Option<String>,
}

async fn create_tenant(cp: Cp, s: Session, form: web::Form<CreateForm>) -> Page {
    s.check(&form.csrf)?;
    let f = form.into_inner();
    let invalid = |m: String| ConsoleError::Status(StatusCode::UNPROCESSABLE_ENTITY, m);
    let slug = TenantSlug::parse(f.slug.trim()).map_err(|e| invalid(e.0))?;
    let tier: Tier = f.tier.parse().map_err(|_| invalid(format!("unknown tier `{}`", f.tier)))?;
    let engine = match (tier, f.engine.as_deref()) {
        (Tier::Dedicated, Some(e)) if !e.is_empty() => {
            Some(e.parse::<Engine>().map_err(|_| invalid(format!("unknown engine `{e}`")))?)
        }
        _ => None,
    };
    let region = f.region.filter(|r| !r.is_empty());
    let created = match cp
        .create_tenant(&s.actor, NewTenant { engine, slug, name: f.name.trim().to_string(), tier, region })
        .await
    {
        Ok(c) => c,
        Err(e @ (Error::Invalid { .. } | Error::Conflict { .. })) => {
            let msg = ConsoleError::from(e).to_string();
            return Ok(html(StatusCode::UNPROCESSABLE_ENTITY, views::new_tenant(&s, Some(&msg), &regions(&cp).await)));
        }
        Err(e) => return Err(e.into()),
    };
    Ok(match created.operation {
        Some(op) => see_other(&format!("/console/operations/{}", op.id)),
        None => see_other(&format!("/console/tenants/{}?notice=created", created.tenant.slug)),
    })
}

#[derive(Deserialize, Default)]
struct TenantNotice {
    notice: Option<String>,
}

async fn tenant(cp: Cp, s: Session, slug: web::Path<String>, q: web::Query<TenantNotice>) -> Page {
    let notice = match q.notice.as_deref() {
        Some("created") => Some("Tenant created."),
        Some("settings") => Some("Limits and flags saved; every app process applies them within moments."),
        Some("revoked") => Some("Key revoked; requests with it are refused from now on."),
        _ => None,
    };
    render_tenant(&cp, &s, &slug, notice, None, None).await
}

async fn render_tenant(
    cp: &ControlPlane,
    s: &Session,
    slug: &str,
    notice: Option<&str>,
    error: Option<&str>,
    new_key: Option<&str>,
) -> Page {
    let t = cp.tenant(slug).await?;
    let usage = cp.tenant_usage_detail(&t.id.to_string(), crate::usage::model::Window::parse("30d")?).await?;
    let settings = cp.tenant_settings(&t.id.to_string()).await?;
    let keys = cp.api_keys(t.id).await?;
    let operations = cp.operations(Some(t.id), None, 20).await?;
    let heavy = cp.heavy_tenants_cached().await?.1.iter().find(|h| h.0.tenant_id == t.id).map(|h| h.2.clone());
    let p = views::TenantPage {
        tenant: &t,
        usage: &usage,
        settings: &settings,
        keys: &keys,
        operations: &operations,
        heavy: heavy.as_deref(),
        notice,
        error,
        new_key,
    };
    let status = if error.is_some() { StatusCode::UNPROCESSABLE_ENTITY } else { StatusCode::OK };
    Ok(html(status, views::tenant(s, &p)))
}

/// The settings form: one field per limit (empty: the tier default) and the
/// flags as a JSON object.
async fn save_settings(cp: Cp, s: Session, slug: web::Path<String>, form: web::Form<BTreeMap<String, String>>) -> Page {
    let mut form = form.into_inner();
    s.check(&form.remove("csrf").unwrap_or_default())?;
    let mut limits = serde_json::Map::new();
    let mut problems = Vec::new();
    for key in tenantry_core::settings::LIMIT_KEYS {
        let raw = form.remove(*key).unwrap_or_default();
        let raw = raw.trim();
        if raw.is_empty() {
            limits.insert((*key).into(), Value::Null);
        } else {
            match raw.parse::<u32>() {
                Ok(v) if v > 0 => {
                    limits.insert((*key).into(), json!(v));
                }
                _ => problems.push(format!(
                    "{}: a whole number above zero, or empty for the tier default",
                    key.replace('_', " ")
                )),
            }
        }
    }
    let flags_raw = form.remove("flags").unwrap_or_default();
    let flags: Value = if flags_raw.trim().is_empty() {
        json!({})
    } else {
        serde_json::from_str(&flags_raw).unwrap_or_else(|_| {
            problems.push("flags: a JSON object such as {\"beta\": true}".into());
            json!({})
        })
    };
    if !problems.is_empty() {
        return render_tenant(&cp, &s, &slug, None, Some(&problems.join("; ")), None).await;
    }
    // Flags no longer listed are removed (null restores the default).
    let current = cp.tenant_settings(&slug).await?;
    let mut flag_patch = serde_json::Map::new();
    if let Some(old) = current.settings.get("flags").and_then(Value::as_object) {
        for k in old.keys() {
            flag_patch.insert(k.clone(), Value::Null);
        }
    }
    match flags.as_object() {
        Some(new) => flag_patch.extend(new.clone()),
        None => return render_tenant(&cp, &s, &slug, None, Some("flags: a JSON object"), None).await,
    }
    let patch = json!({"limits": limits, "flags": flag_patch});
    match cp.update_settings(&s.actor, &slug, &patch).await {
        Ok(_) => Ok(see_other(&format!("/console/tenants/{slug}?notice=settings"))),
        Err(Error::Invalid { message, .. }) => render_tenant(&cp, &s, &slug, None, Some(&message), None).await,
        Err(e) => Err(e.into()),
    }
}

#[derive(Deserialize)]
struct KeyForm {
    csrf: String,
    name: Option<String>,
}

async fn create_key(cp: Cp, s: Session, slug: web::Path<String>, form: web::Form<KeyForm>) -> Page {
    s.check(&form.csrf)?;
    let t = cp.tenant(&slug).await?;
    let key = cp.create_api_key(&s.actor, t.id, form.name.as_deref().unwrap_or("").trim()).await?;
    render_tenant(&cp, &s, &slug, Some("Key created."), None, Some(&key.key)).await
}

async fn revoke_key(cp: Cp, s: Session, path: web::Path<(String, Uuid)>, form: web::Form<CsrfOnly>) -> Page {
    s.check(&form.csrf)?;
    let (slug, key) = path.into_inner();
    let t = cp.tenant(&slug).await?;
    cp.revoke_api_key(&s.actor, t.id, key).await?;
    Ok(see_other(&format!("/console/tenants/{slug}?notice=revoked")))
}

#[derive(Deserialize)]
struct PromoteQuery {
    engine: Option<String>,
    region: Option<String>,
}

/// The engine a promote form names, and the dry run's target for it.
fn engine_target(engine: Option<&str>) -> (Engine, &'static str) {
    match engine {
        Some("rds") => (Engine::Rds, "dedicated:rds"),
        _ => (Engine::Logical, "dedicated"),
    }
}

async fn promote_confirm(cp: Cp, s: Session, slug: web::Path<String>, q: web::Query<PromoteQuery>) -> Page {
    let (engine, target) = engine_target(q.engine.as_deref());
    let region = q.region.clone().filter(|r| !r.is_empty()).or_else(|| cp.dedicated_region(engine)).unwrap_or_default();
    // Each engine provisions in one region: another choice fails the dry run
    // here rather than the operation later.
    let plan = match cp.check_region(engine, Some(&region)) {
        Ok(()) => cp.move_plan(&slug, target).await,
        Err(e) => Err(e),
    }
    .map_err(|e| ConsoleError::from(e).to_string());
    let regions = regions(&cp).await;
    let chooser = maud::html! {
        form.inline method="get" {
            label for="engine" { "Engine" }
            select #engine name="engine" {
                option value="logical" selected[engine == Engine::Logical] { "logical database on the cluster" }
                option value="rds" selected[engine == Engine::Rds] disabled[cp.rds.is_none()] { "AWS RDS instance" }
            }
            label for="region" { "Region" }
            select #region name="region" {
                @for r in &regions { option value=(r) selected[*r == region] { (r) } }
            }
            button type="submit" { "Re-plan" }
        }
    };
    ok(views::confirm(
        &s,
        &views::Confirm {
            title: &format!("Promote {slug} to a dedicated database"),
            slug: &slug,
            action: &format!("/console/tenants/{slug}/promote"),
            button: "Promote now",
            plan,
            fields: vec![("engine", engine.as_str().to_string()), ("region", region)],
            chooser: Some(chooser),
        },
    ))
}

#[derive(Deserialize)]
struct ActionForm {
    csrf: String,
    engine: Option<String>,
    region: Option<String>,
    target: Option<String>,
    confirm: Option<String>,
}

async fn promote(cp: Cp, s: Session, slug: web::Path<String>, form: web::Form<ActionForm>) -> Page {
    s.check(&form.csrf)?;
    let engine = engine_target(form.engine.as_deref()).0;
    let region = form.region.clone().filter(|r| !r.is_empty());
    let op = cp.promote_tenant(&s.actor, &slug, Some(engine), region).await?;
    Ok(see_other(&format!("/console/operations/{}", op.id)))
}

#[derive(Deserialize)]
struct MoveQuery {
    target: Option<Uuid>,
}

async fn move_confirm(cp: Cp, s: Session, slug: web::Path<String>, q: web::Query<MoveQuery>) -> Page {
    let t = cp.tenant(&slug).await?;
    let current = t.placement.as_ref().map(|p| p.backend_id);
    let targets: Vec<_> = cp
        .backends()
        .await?
        .into_iter()
        .filter(|b| b.status == BackendStatus::Ready && b.kind != BackendKind::Template && Some(b.id) != current)
        .filter(|b| b.kind == BackendKind::SharedPool || b.tenants == 0)
        .collect();
    let target = q.target.or_else(|| targets.first().map(|b| b.id));
    let chooser = maud::html! {
        form.inline method="get" {
            label for="target" { "Target backend" }
            select #target name="target" {
                @for b in &targets {
                    option value=(b.id) selected[Some(b.id) == target] { (b.name) " (" (b.kind) ", " (b.tenants) " tenants)" }
                }
            }
            button type="submit" { "Re-plan" }
        }
    };
    let plan = match target {
        Some(id) => cp.move_plan(&slug, &id.to_string()).await.map_err(|e| ConsoleError::from(e).to_string()),
        None => Err("there is no other ready backend to move to".to_string()),
    };
    ok(views::confirm(
        &s,
        &views::Confirm {
            title: &format!("Move {slug}"),
            slug: &slug,
            action: &format!("/console/tenants/{slug}/move"),
            button: "Move now",
            plan,
            fields: vec![("target", target.map(|t| t.to_string()).unwrap_or_default())],
            chooser: Some(chooser),
        },
    ))
}

async fn move_tenant(cp: Cp, s: Session, slug: web::Path<String>, form: web::Form<ActionForm>) -> Page {
    s.check(&form.csrf)?;
    let target = form
        .target
        .as_deref()
        .and_then(|t| Uuid::parse_str(t).ok())
        .ok_or_else(|| ConsoleError::Status(StatusCode::UNPROCESSABLE_ENTITY, "choose a target backend".into()))?;
    let op = cp.move_tenant(&s.actor, &slug, target).await?;
    Ok(see_other(&format!("/console/operations/{}", op.id)))
}

async fn demote_confirm(cp: Cp, s: Session, slug: web::Path<String>) -> Page {
    let plan = cp.move_plan(&slug, "shared").await.map_err(|e| ConsoleError::from(e).to_string());
    ok(views::confirm(
        &s,
        &views::Confirm {
            title: &format!("Demote {slug} to the shared tier"),
            slug: &slug,
            action: &format!("/console/tenants/{slug}/demote"),
            button: "Demote now",
            plan,
            fields: vec![],
            chooser: None,
        },
    ))
}

async fn demote(cp: Cp, s: Session, slug: web::Path<String>, form: web::Form<ActionForm>) -> Page {
    s.check(&form.csrf)?;
    let op = cp.demote_tenant(&s.actor, &slug, None).await?;
    Ok(see_other(&format!("/console/operations/{}", op.id)))
}

async fn export(cp: Cp, s: Session, slug: web::Path<String>) -> Result<HttpResponse, ConsoleError> {
    crate::export::export_response(&cp, &s.actor, &slug).await.map_err(|e| ConsoleError::Status(e.status, e.message))
}

async fn erase_confirm(cp: Cp, s: Session, slug: web::Path<String>) -> Page {
    let t = cp.tenant(&slug).await?;
    erase_page(&cp, &s, &t, None).await
}

/// The erase confirmation, with the rows last measured; 422 with `error`.
async fn erase_page(cp: &ControlPlane, s: &Session, t: &crate::tenants::TenantView, error: Option<&str>) -> Page {
    let rows = cp.tenant_usage_detail(&t.id.to_string(), crate::usage::model::Window { hours: 1 }).await?.usage.rows;
    let status = if error.is_some() { StatusCode::UNPROCESSABLE_ENTITY } else { StatusCode::OK };
    Ok(html(status, views::erase(s, t, rows, error)))
}

async fn erase(cp: Cp, s: Session, slug: web::Path<String>, form: web::Form<ActionForm>) -> Page {
    s.check(&form.csrf)?;
    let t = cp.tenant(&slug).await?;
    if form.confirm.as_deref().map(str::trim) != Some(t.slug.as_str()) {
        let msg =
            format!("you typed `{}`; type `{}` exactly to erase it", form.confirm.as_deref().unwrap_or(""), t.slug);
        return erase_page(&cp, &s, &t, Some(&msg)).await;
    }
    let op = cp.erase_tenant(&s.actor, &t.slug).await?;
    Ok(see_other(&format!("/console/operations/{}", op.id)))
}

async fn operation_slug(cp: &ControlPlane, o: &crate::registry::OperationView) -> Option<String> {
    match o.tenant_id {
        Some(id) => cp.tenant(&id.to_string()).await.ok().map(|t| t.slug),
        None => o.params["slug"].as_str().map(str::to_string),
    }
}

async fn operation(cp: Cp, s: Session, id: web::Path<Uuid>) -> Page {
    let o = cp.operation(*id).await?;
    let slug = operation_slug(&cp, &o).await;
    ok(views::operation(&s, &o, slug.as_deref()))
}

/// Polled by the operation page: state, step and progress as JSON.
async fn operation_progress(cp: Cp, _s: Session, id: web::Path<Uuid>) -> Result<HttpResponse, ConsoleError> {
    let o = cp.operation(*id).await?;
    Ok(HttpResponse::Ok().insert_header((header::CACHE_CONTROL, "no-store")).json(json!({
        "state": o.state,
        "step": o.step,
        "progress": o.progress,
        "error": o.error,
        "attempts": o.attempts,
        "finished": matches!(o.state.as_str(), "succeeded" | "failed" | "cancelled"),
        "cancellable": !matches!(o.state.as_str(), "succeeded" | "failed" | "cancelled" | "cancelling")
            && o.kind != OperationKind::Erase && !crate::registry::past_seal(&o.progress),
    })))
}

async fn cancel(cp: Cp, s: Session, id: web::Path<Uuid>, form: web::Form<CsrfOnly>) -> Page {
    s.check(&form.csrf)?;
    cp.cancel_operation(&s.actor, *id).await?;
    Ok(see_other(&format!("/console/operations/{id}")))
}

async fn backends(cp: Cp, s: Session) -> Page {
    let list: Vec<_> = cp.backends().await?.into_iter().filter(|b| b.status != BackendStatus::Retired).collect();
    let migrations = cp.migration_status().await?;
    let health: Vec<Result<(i64, i64), String>> = futures::stream::iter(list.iter())
        .map(|b| {
            let cp = cp.clone();
            async move {
                let probe = async {
                    let mut conn = cp.owner_conn(b, "tenantry-console").await?;
                    let row: (i64, i64) = sea_orm::sqlx::query_as(
                        "SELECT pg_database_size(current_database()), \
                         (SELECT count(*) FROM pg_stat_activity WHERE datname = current_database())",
                    )
                    .fetch_one(&mut conn)
                    .await?;
                    let _ = sea_orm::sqlx::Connection::close(conn).await;
                    Ok::<_, Error>(row)
                };
                match tokio::time::timeout(HEALTH_TIMEOUT, probe).await {
                    Ok(Ok(r)) => Ok(r),
                    Ok(Err(e)) => Err(e.to_string()),
                    Err(_) => Err(format!("no answer within {HEALTH_TIMEOUT:?}")),
                }
            }
        })
        .buffered(8)
        .collect()
        .await;
    let rows: Vec<views::BackendRow> = list
        .iter()
        .zip(health)
        .map(|(b, h)| views::BackendRow {
            backend: b,
            migration: migrations.iter().find(|m| m.backend_id == b.id),
            health: h,
        })
        .collect();
    ok(views::backends(&s, &rows))
}

async fn migrations(cp: Cp, s: Session) -> Page {
    let rows = cp.migration_status().await?;
    ok(views::migrations(&s, crate::migrate::latest(crate::migrate::TENANT), &rows, None))
}

#[derive(Deserialize)]
struct ApplyForm {
    csrf: String,
    concurrency: Option<String>,
}

async fn apply_migrations(cp: Cp, s: Session, form: web::Form<ApplyForm>) -> Page {
    s.check(&form.csrf)?;
    let concurrency = match form.concurrency.as_deref().map(str::trim).unwrap_or("8").parse::<usize>() {
        Ok(c) if (1..=64).contains(&c) => c,
        _ => return Err(ConsoleError::Status(StatusCode::UNPROCESSABLE_ENTITY, "concurrency: 1 to 64".into())),
    };
    let run = cp.migrate_fleet(&s.actor, concurrency, |_, _| {}).await?;
    let rows = cp.migration_status().await?;
    ok(views::migrations(&s, crate::migrate::latest(crate::migrate::TENANT), &rows, Some(&run)))
}

#[derive(Deserialize)]
struct AuditParams {
    tenant: Option<String>,
    actor: Option<String>,
    action: Option<String>,
    cursor: Option<i64>,
}

async fn audit(cp: Cp, s: Session, q: web::Query<AuditParams>) -> Page {
    const LIMIT: u64 = 100;
    let trimmed = |v: &Option<String>| v.as_deref().map(str::trim).filter(|v| !v.is_empty()).map(str::to_string);
    let tenant = match trimmed(&q.tenant) {
        None => None,
        Some(t) => Some(match Uuid::parse_str(&t) {
            Ok(id) => id,
            Err(_) => cp.tenant(&t).await?.id,
        }),
    };
    let query = crate::tenants::AuditQuery {
        tenant,
        actor: trimmed(&q.actor),
        action: trimmed(&q.action),
        since: None,
        before: q.cursor,
        limit: LIMIT,
    };
    let entries = cp.audit_log(&query).await?;
    let next = (entries.len() as u64 == LIMIT).then(|| entries.last().map(|e| e.id)).flatten();
    let f = views::AuditFilter {
        tenant: q.tenant.as_deref().unwrap_or(""),
        actor: q.actor.as_deref().unwrap_or(""),
        action: q.action.as_deref().unwrap_or(""),
        next,
    };
    ok(views::audit(&s, &entries, &f))
}

fn form_error(err: actix_web::error::UrlencodedError, _req: &HttpRequest) -> actix_web::Error {
    ConsoleError::Status(StatusCode::BAD_REQUEST, format!("the form could not be read: {err}")).into()
}

fn query_error(err: actix_web::error::QueryPayloadError, _req: &HttpRequest) -> actix_web::Error {
    ConsoleError::Status(StatusCode::BAD_REQUEST, format!("the address has an invalid value: {err}")).into()
}

fn path_error(err: actix_web::error::PathError, _req: &HttpRequest) -> actix_web::Error {
    ConsoleError::Status(StatusCode::NOT_FOUND, format!("no such page: {err}")).into()
}

async fn not_found() -> Page {
    Err(ConsoleError::Status(StatusCode::NOT_FOUND, "no such console page".into()))
}

/// The console's routes, mounted at `/console`.
pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::scope("/console")
            .app_data(web::FormConfig::default().limit(64 * 1024).error_handler(form_error))
            .app_data(web::QueryConfig::default().error_handler(query_error))
            .app_data(web::PathConfig::default().error_handler(path_error))
            .route("", web::get().to(home))
            .route("/", web::get().to(home))
            .route("/assets/{file}", web::get().to(asset))
            .route("/login", web::get().to(login_form))
            .route("/login", web::post().to(login))
            .route("/logout", web::post().to(logout))
            .route("/sso/login", web::get().to(sso::start))
            .route("/sso/callback", web::get().to(sso::callback))
            .route("/tenants", web::get().to(tenants))
            .route("/tenants", web::post().to(create_tenant))
            .route("/tenants/new", web::get().to(new_tenant))
            .route("/tenants/{slug}", web::get().to(tenant))
            .route("/tenants/{slug}/settings", web::post().to(save_settings))
            .route("/tenants/{slug}/keys", web::post().to(create_key))
            .route("/tenants/{slug}/keys/{key}/revoke", web::post().to(revoke_key))
            .route("/tenants/{slug}/promote", web::get().to(promote_confirm))
            .route("/tenants/{slug}/promote", web::post().to(promote))
            .route("/tenants/{slug}/move", web::get().to(move_confirm))
            .route("/tenants/{slug}/move", web::post().to(move_tenant))
            .route("/tenants/{slug}/demote", web::get().to(demote_confirm))
            .route("/tenants/{slug}/demote", web::post().to(demote))
            .route("/tenants/{slug}/export", web::get().to(export))
            .route("/tenants/{slug}/people", web::get().to(people::list))
            .route("/tenants/{slug}/people/{id}/erase", web::post().to(people::erase))
            .route("/tenants/{slug}/people/providers", web::post().to(people::put_provider))
            .route("/tenants/{slug}/people/providers/{name}/remove", web::post().to(people::remove_provider))
            .route("/tenants/{slug}/erase", web::get().to(erase_confirm))
            .route("/tenants/{slug}/erase", web::post().to(erase))
            .route("/operations/{id}", web::get().to(operation))
            .route("/operations/{id}/progress", web::get().to(operation_progress))
            .route("/operations/{id}/cancel", web::post().to(cancel))
            .route("/backends", web::get().to(backends))
            .route("/estates", web::get().to(estates::list))
            .route("/estates/{id}", web::get().to(estates::one))
            .route("/estates/{id}/plan", web::get().to(estates::plan))
            .route("/estates/{id}/adopt", web::post().to(estates::adopt))
            .route("/estates/{id}/revert", web::post().to(estates::revert))
            .route("/estates/{id}/release", web::post().to(estates::release))
            .route("/migrations", web::get().to(migrations))
            .route("/migrations/apply", web::post().to(apply_migrations))
            .route("/audit", web::get().to(audit))
            .default_service(web::to(not_found)),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_stays_inside_the_console() {
        assert_eq!(safe_next("/console/tenants?q=a"), "/console/tenants?q=a");
        assert_eq!(safe_next("https://evil.example/"), "/console");
        assert_eq!(safe_next("//evil.example/console"), "/console");
        assert_eq!(safe_next("/console\\@evil"), "/console");
        assert_eq!(safe_next("/console\r\nSet-Cookie: x=y"), "/console", "no header splitting");
    }

    #[test]
    fn names_are_checked() {
        assert!(session::valid_name("alice@example.com"));
        assert!(!session::valid_name(""));
        assert!(!session::valid_name("a b"));
        assert!(!session::valid_name(&"x".repeat(65)));
    }
}
