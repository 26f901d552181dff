//! Sign-ins counted in memory and appended to the registry's
//! `sign_in_samples` with the usage flush: per tenant and person, the first
//! and last time a token of theirs was checked in the interval, and the
//! email, name and role it held. The control plane folds them into
//! `tenant_users` (`GET /v1/users`). Only verified tokens are counted, and at
//! most [`MAX_PENDING`] people per interval (more are dropped and counted),
//! so no flood can grow it.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use chrono::{DateTime, Utc};
use sea_orm::{DatabaseConnection, DbErr};
use uuid::Uuid;

use crate::tokens::Person;

/// People kept between two flushes.
pub const MAX_PENDING: usize = 100_000;

#[derive(Debug, Clone)]
struct Seen {
    email: Option<String>,
    name: Option<String>,
    role: &'static str,
    first: DateTime<Utc>,
    last: DateTime<Utc>,
}

type Who = (Uuid, String, String);

#[derive(Default)]
pub struct SignInMeter {
    pending: Mutex<HashMap<Who, Seen>>,
    dropped: AtomicU64,
}

impl SignInMeter {
    /// `person` signed in now.
    pub fn record(&self, person: &Person) {
        let now = Utc::now();
        let mut map = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        let who = (person.tenant_id, person.issuer.clone(), person.subject.clone());
        let full = map.len() >= MAX_PENDING;
        match map.get_mut(&who) {
            Some(seen) => {
                seen.last = now;
                seen.email.clone_from(&person.email);
                seen.name.clone_from(&person.name);
                seen.role = person.role.as_str();
            }
            None if full => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
            }
            None => {
                let seen = Seen {
                    email: person.email.clone(),
                    name: person.name.clone(),
                    role: person.role.as_str(),
                    first: now,
                    last: now,
                };
                map.insert(who, seen);
            }
        }
    }

    /// Sign-ins not recorded because [`MAX_PENDING`] people were pending.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// People with sign-ins not yet flushed.
    pub fn pending(&self) -> usize {
        self.pending.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// Appends every pending sign-in in one INSERT of arrays; on failure
    /// they are kept (merged with what came meanwhile). Returns the people
    /// written.
    pub async fn flush(&self, registry: &DatabaseConnection) -> Result<usize, DbErr> {
        let drained = std::mem::take(&mut *self.pending.lock().unwrap_or_else(|p| p.into_inner()));
        if drained.is_empty() {
            return Ok(0);
        }
        let n = drained.len();
        let (mut tenants, mut issuers, mut subjects) =
            (Vec::with_capacity(n), Vec::with_capacity(n), Vec::with_capacity(n));
        let (mut emails, mut names, mut roles) = (Vec::with_capacity(n), Vec::with_capacity(n), Vec::with_capacity(n));
        let (mut firsts, mut lasts) = (Vec::with_capacity(n), Vec::with_capacity(n));
        for ((tenant, issuer, subject), seen) in &drained {
            tenants.push(*tenant);
            issuers.push(issuer.clone());
            subjects.push(subject.clone());
            emails.push(seen.email.clone());
            names.push(seen.name.clone());
            roles.push(seen.role.to_string());
            firsts.push(seen.first);
            lasts.push(seen.last);
        }
        let written = sea_orm::sqlx::query(
            "INSERT INTO sign_in_samples (tenant_id, issuer, subject, email, name, role, first_at, last_at) \
             SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], \
                                  $7::timestamptz[], $8::timestamptz[])",
        )
        .bind(tenants)
        .bind(issuers)
        .bind(subjects)
        .bind(emails)
        .bind(names)
        .bind(roles)
        .bind(firsts)
        .bind(lasts)
        .execute(registry.get_postgres_connection_pool())
        .await;
        if let Err(e) = written {
            let mut map = self.pending.lock().unwrap_or_else(|p| p.into_inner());
            for (who, seen) in drained {
                let newer = map.remove(&who);
                let first = seen.first;
                let merged = match newer {
                    Some(n) => Seen { first, ..n },
                    None => seen,
                };
                map.insert(who, merged);
            }
            return Err(DbErr::Exec(sea_orm::RuntimeErr::SqlxError(e.into())));
        }
        Ok(drained.len())
    }
}
