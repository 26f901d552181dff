//! The console's people of one tenant (staff role `admin`: personal data):
//! its identity providers (issuer, organisation, roles mapped) and the people
//! who signed in through them, each erasable.

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, web};
use maud::{Markup, html};
use serde::Deserialize;
use uuid::Uuid;

use tenantry_core::registry::TenantUser;

use super::session::{ConsoleError, Session};
use super::views::{Nav, html, page, see_other};
use crate::identity::IdentityProvider;
use crate::plane::ControlPlane;

type Cp = web::Data<ControlPlane>;

/// People shown on one page.
const PAGE: u64 = 200;

#[derive(Deserialize)]
pub struct PeopleQuery {
    after: Option<Uuid>,
    notice: Option<String>,
}

/// `GET /console/tenants/{slug}/people`
pub async fn list(
    cp: Cp,
    s: Session,
    slug: web::Path<String>,
    q: web::Query<PeopleQuery>,
) -> Result<HttpResponse, ConsoleError> {
    let t = cp.tenant(&slug).await?;
    let providers = cp.identity_providers(t.id).await?;
    let users = cp.tenant_users(t.id, q.after, PAGE).await?;
    let notice = (q.notice.as_deref() == Some("erased")).then_some("Erased: their record and pending sign-ins.");
    Ok(html(StatusCode::OK, people_page(&s, &t.slug, &providers, &users, notice)))
}

#[derive(Deserialize)]
pub struct EraseForm {
    csrf: String,
}

/// `POST /console/tenants/{slug}/people/{id}/erase`
pub async fn erase(
    cp: Cp,
    s: Session,
    path: web::Path<(String, Uuid)>,
    form: web::Form<EraseForm>,
) -> Result<HttpResponse, ConsoleError> {
    s.check(&form.csrf)?;
    let (slug, user) = path.into_inner();
    let t = cp.tenant(&slug).await?;
    cp.erase_user(&s.actor, t.id, user).await?;
    Ok(see_other(&format!("/console/tenants/{}/people?notice=erased", t.slug)))
}

fn people_page(
    s: &Session,
    slug: &str,
    providers: &[IdentityProvider],
    users: &[TenantUser],
    notice: Option<&str>,
) -> Markup {
    let base = format!("/console/tenants/{slug}");
    page(
        "People",
        Some(s),
        Nav::Tenants,
        html! {
            h1 { a href=(base) { (slug) } " · people" }
            @if let Some(n) = notice { p.notice role="status" { (n) } }
            section.card {
                h2 { "Identity providers" }
                @if providers.is_empty() {
                    p.muted { "None: this tenant's people sign in with API keys only. Add one with "
                        code { "PUT /v1/tenants/" (slug) "/identity-providers/{name}" } " or "
                        code { "tenantry tenants idp " (slug) " put" } "." }
                } @else {
                    table #providers {
                        thead { tr { th { "Name" } th { "Issuer" } th { "Organisation" } th { "Roles mapped" } } }
                        tbody {
                            @for p in providers {
                                tr {
                                    td { (p.name) }
                                    td { code { (p.config.issuer) } }
                                    td { (p.config.org_value.as_deref()
                                        .or(p.config.tenants_claim.as_ref().map(|_| "by the tenants claim"))
                                        .unwrap_or("-")) }
                                    td { (p.config.role_map.iter().map(|(k, v)| format!("{k} → {}", v.as_str()))
                                        .collect::<Vec<_>>().join(", ")) }
                                }
                            }
                        }
                    }
                }
            }
            section.card {
                h2 { "People who signed in" }
                @if users.is_empty() {
                    p.muted { "Nobody yet." }
                } @else {
                    table #people {
                        thead { tr { th { "Email" } th { "Name" } th { "Role" } th { "First seen" } th { "Last seen" } th {} } }
                        tbody {
                            @for u in users {
                                tr {
                                    td { (u.email.as_deref().unwrap_or(&u.subject)) }
                                    td { (u.name.as_deref().unwrap_or("")) }
                                    td { (u.role) }
                                    td { (u.first_seen.format("%Y-%m-%d %H:%M")) }
                                    td { (u.last_seen.format("%Y-%m-%d %H:%M")) }
                                    td {
                                        form method="post" action={ (base) "/people/" (u.id) "/erase" } {
                                            input type="hidden" name="csrf" value=(s.csrf);
                                            button.danger type="submit" { "Erase" }
                                        }
                                    }
                                }
                            }
                        }
                    }
                    @if users.len() as u64 == PAGE {
                        @if let Some(last) = users.last() {
                            p { a href={ (base) "/people?after=" (last.id) } { "Next page" } }
                        }
                    }
                }
            }
        },
    )
}
