//! The console's people of one tenant (staff role `admin`: personal data):
//! its identity providers (issuer, organisation, roles mapped; put from a
//! JSON form, removed) and the people who signed in through them, each
//! erasable.

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
    let notice = match q.notice.as_deref() {
        Some("erased") => Some("Erased: their record and pending sign-ins."),
        Some("saved") => Some("Identity provider saved; the app takes its tokens within 10 s."),
        Some("removed") => Some("Identity provider removed; its tokens sign nobody in within 10 s."),
        _ => None,
    };
    Ok(html(StatusCode::OK, people_page(&s, &t.slug, &providers, &users, notice, None)))
}

#[derive(Deserialize)]
pub struct ProviderForm {
    csrf: String,
    name: String,
    config: String,
}

/// `POST /console/tenants/{slug}/people/providers`: create or replace one
/// from its JSON (what `PUT .../identity-providers/{name}` takes).
pub async fn put_provider(
    cp: Cp,
    s: Session,
    slug: web::Path<String>,
    form: web::Form<ProviderForm>,
) -> Result<HttpResponse, ConsoleError> {
    s.check(&form.csrf)?;
    let t = cp.tenant(&slug).await?;
    let refused = match serde_json::from_str::<tenantry_core::identity::ProviderConfig>(&form.config) {
        Err(e) => format!("the configuration is not valid: {e}"),
        Ok(config) => match cp.put_identity_provider(&s.actor, t.id, form.name.trim(), config).await {
            Ok(_) => return Ok(see_other(&format!("/console/tenants/{}/people?notice=saved", t.slug))),
            Err(crate::error::Error::Invalid { message, .. } | crate::error::Error::Conflict { message, .. }) => {
                message
            }
            Err(e) => return Err(e.into()),
        },
    };
    let providers = cp.identity_providers(t.id).await?;
    let users = cp.tenant_users(t.id, None, PAGE).await?;
    let page = people_page(&s, &t.slug, &providers, &users, None, Some((&refused, &form.name, &form.config)));
    Ok(html(StatusCode::UNPROCESSABLE_ENTITY, page))
}

/// `POST /console/tenants/{slug}/people/providers/{name}/remove`
pub async fn remove_provider(
    cp: Cp,
    s: Session,
    path: web::Path<(String, String)>,
    form: web::Form<EraseForm>,
) -> Result<HttpResponse, ConsoleError> {
    s.check(&form.csrf)?;
    let (slug, name) = path.into_inner();
    let t = cp.tenant(&slug).await?;
    cp.remove_identity_provider(&s.actor, t.id, &name).await?;
    Ok(see_other(&format!("/console/tenants/{}/people?notice=removed", t.slug)))
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
    // A provider form refused: why, and what was typed.
    refused: Option<(&str, &str, &str)>,
) -> Markup {
    let example = "{\"issuer\": \"https://login.example.com/realms/acme\", \"audience\": \"tenantry\", \
                   \"role_claim\": \"roles\", \"role_map\": {\"office\": \"manager\"}}";
    let (typed_name, typed_config) = refused.map_or(("main", example), |(_, n, c)| (n, c));
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
                        thead { tr { th { "Name" } th { "Issuer" } th { "Organisation" } th { "Roles mapped" } th {} } }
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
                                    td {
                                        form method="post" action={ (base) "/people/providers/" (p.name) "/remove" } {
                                            input type="hidden" name="csrf" value=(s.csrf);
                                            button.danger type="submit" { "Remove" }
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            }
            section.card {
                h2 { "Add or replace a provider" }
                @if let Some((why, ..)) = refused { p.error role="alert" { (why) } }
                form #provider-form method="post" action={ (base) "/people/providers" } {
                    input type="hidden" name="csrf" value=(s.csrf);
                    label for="provider-name" { "Name" }
                    input #provider-name name="name" required value=(typed_name);
                    label for="provider-config" { "Configuration (JSON, as the admin API takes it)" }
                    textarea #provider-config name="config" rows="6" required { (typed_config) }
                    button.primary type="submit" { "Save" }
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
