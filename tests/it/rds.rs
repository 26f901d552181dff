//! The RDS engine against the moto emulator on loopback.

use reqwest::{Method, StatusCode};
use serde_json::json;

use tenantry::testkit::rds_config;
use tenantry_provisioner::rds::{final_snapshot_id, instance_id};
use tenantry_provisioner::{RdsError, RdsProvisioner};

use crate::helpers::{spawn_app_with, with_rds};

#[tokio::test]
async fn an_instance_is_created_once_encrypted_protected_and_retired_with_a_final_snapshot() {
    let rds = RdsProvisioner::new(rds_config()).await;
    let id = instance_id(&uuid::Uuid::now_v7().simple().to_string());
    assert!(rds.describe(&id).await.unwrap().is_none(), "a new id names no instance");
    let first = rds.ensure_instance(&id, &[("tenantry:tenant-id", "t1"), ("managed-by", "tenantry")]).await.unwrap();
    let again = rds.ensure_instance(&id, &[]).await.unwrap();
    assert_eq!(first.id, again.id);
    assert!(first.encrypted && first.deletion_protection, "{first:?}");
    let endpoint = rds.wait_available(&id).await.unwrap();
    assert!(!endpoint.host.is_empty() && endpoint.port > 0);
    assert_eq!(rds.master_password(&id).expose_len(), 64);

    let snapshot = rds.retire(&id).await.unwrap();
    assert_eq!(snapshot, final_snapshot_id(&id));
    assert!(rds.describe(&id).await.unwrap().is_none(), "retired instances are gone");
    assert!(rds.snapshot_exists(&snapshot).await.unwrap(), "a final snapshot was taken");
    assert_eq!(rds.retire(&id).await.unwrap(), snapshot, "retiring twice is harmless");
}

trait ExposeLen {
    fn expose_len(&self) -> usize;
}
impl ExposeLen for secrecy::SecretString {
    fn expose_len(&self) -> usize {
        secrecy::ExposeSecret::expose_secret(self).len()
    }
}

#[tokio::test]
async fn invalid_requests_and_missing_instances_surface_as_clear_errors() {
    let mut cfg = rds_config();
    cfg.wait_secs = 1;
    let rds = RdsProvisioner::new(cfg).await;
    let err = rds.ensure_instance("Not_A-valid--id-", &[]).await.unwrap_err();
    assert!(matches!(err, RdsError::Rejected(ref m) if m.starts_with("InvalidParameterValue: ")), "{err}");
    assert!(err.is_permanent());
    let err = rds.wait_available("tenantry-never-created").await.unwrap_err();
    assert!(matches!(err, RdsError::Timeout { .. }), "{err}");
    assert!(!rds.snapshot_exists("tenantry-no-such-snapshot").await.unwrap());
}

#[tokio::test]
async fn a_tenant_on_the_rds_engine_is_provisioned_end_to_end_and_serves() {
    let app = spawn_app_with(with_rds).await;
    let (s, created) = app
        .admin_call(
            Method::POST,
            "/v1/tenants",
            Some(json!({"slug": "cloudy", "name": "Cloudy", "tier": "dedicated", "engine": "rds"})),
        )
        .await;
    assert_eq!(s, StatusCode::ACCEPTED, "{created}");
    let op = app.wait_operation(created["operation"]["id"].as_str().unwrap()).await;
    assert_eq!(
        (op["state"].clone(), op["progress"].clone()),
        (json!("succeeded"), json!({"step": 5, "steps": 5})),
        "{op}"
    );
    let tenant_id = created["tenant"]["id"].as_str().unwrap();
    let (_, backends) = app.admin_call(Method::GET, "/v1/backends", None).await;
    let rds_backend =
        backends["backends"].as_array().unwrap().iter().find(|b| b["engine"] == "rds").expect("an rds backend").clone();
    let instance = instance_id(&tenant_id.replace('-', ""));
    assert_eq!(rds_backend["name"], json!(instance));

    let rds = RdsProvisioner::new(rds_config()).await;
    let described = rds.describe(&instance).await.unwrap().expect("the instance exists in RDS");
    assert!(described.encrypted && described.deletion_protection);

    let (_, key) = app.admin_call(Method::POST, &format!("/v1/tenants/{tenant_id}/api-keys"), None).await;
    let key = key["key"].as_str().unwrap();
    let (s, asset) = app.post(key, "/v1/assets", json!({"name": "Cloud pump", "tag": "C-1"})).await;
    assert_eq!(s, StatusCode::CREATED, "{asset}");
    let (s, got) = app.get(key, "/v1/assets/by-tag/C-1").await;
    assert_eq!((s, got["name"].clone()), (StatusCode::OK, json!("Cloud pump")));
}

#[tokio::test]
async fn rds_is_refused_clearly_when_not_configured() {
    let app = crate::helpers::spawn_app().await;
    let (s, body) = app
        .admin_call(
            Method::POST,
            "/v1/tenants",
            Some(json!({"slug": "cloudy", "name": "C", "tier": "dedicated", "engine": "rds"})),
        )
        .await;
    assert_eq!((s, body["error"]["code"].clone()), (StatusCode::UNPROCESSABLE_ENTITY, json!("engine_unavailable")));
    let (s, body) = app
        .admin_call(
            Method::POST,
            "/v1/tenants",
            Some(json!({"slug": "cloudy", "name": "C", "tier": "shared", "engine": "logical"})),
        )
        .await;
    assert_eq!((s, body["error"]["code"].clone()), (StatusCode::UNPROCESSABLE_ENTITY, json!("engine_not_applicable")));
}

#[tokio::test]
async fn an_rds_backend_is_retired_with_a_final_snapshot() {
    let app = spawn_app_with(with_rds).await;
    let (_, created) = app
        .admin_call(
            Method::POST,
            "/v1/tenants",
            Some(json!({"slug": "leaving", "name": "L", "tier": "dedicated", "engine": "rds"})),
        )
        .await;
    let op = app.wait_operation(created["operation"]["id"].as_str().unwrap()).await;
    assert_eq!(op["state"], "succeeded", "{op}");
    let backend_id = op["backend_id"].as_str().unwrap().to_string();
    // Until moves exist, empty the backend by hand.
    let registry = crate::helpers::connect(&app.cp.config().registry_database, false);
    sea_orm::ConnectionTrait::execute_unprepared(&registry, "DELETE FROM placements").await.unwrap();

    let (s, retire) = app.admin_call(Method::POST, &format!("/v1/backends/{backend_id}/retire"), None).await;
    assert_eq!(s, StatusCode::ACCEPTED, "{retire}");
    let done = app.wait_operation(retire["id"].as_str().unwrap()).await;
    assert_eq!(done["state"], "succeeded", "{done}");
    let instance = instance_id(&created["tenant"]["id"].as_str().unwrap().replace('-', ""));
    assert_eq!(done["params"]["final_snapshot"], json!(final_snapshot_id(&instance)));
    let rds = RdsProvisioner::new(rds_config()).await;
    assert!(rds.describe(&instance).await.unwrap().is_none());
    assert!(rds.snapshot_exists(&final_snapshot_id(&instance)).await.unwrap());
}

#[tokio::test]
async fn a_provision_rejected_by_rds_fails_at_once_with_the_reason_and_leaves_nothing() {
    let app = spawn_app_with(|s| {
        with_rds(s);
        if let Some(rds) = s.control_plane.rds.as_mut() {
            rds.db_subnet_group = Some("no-such-subnet-group".into());
        }
    })
    .await;
    let (s, created) = app
        .admin_call(
            Method::POST,
            "/v1/tenants",
            Some(json!({"slug": "rejected", "name": "R", "tier": "dedicated", "engine": "rds"})),
        )
        .await;
    assert_eq!(s, StatusCode::ACCEPTED, "{created}");
    let op = app.wait_operation(created["operation"]["id"].as_str().unwrap()).await;
    assert_eq!((op["state"].clone(), op["attempts"].clone()), (json!("failed"), json!(1)), "{op}");
    let error = op["error"].as_str().unwrap();
    assert!(error.starts_with("create_instance: ") && error.contains("DBSubnetGroupNotFound"), "{error}");
    let tenant = created["tenant"]["id"].as_str().unwrap();
    assert_eq!(app.admin_call(Method::GET, &format!("/v1/tenants/{tenant}"), None).await.0, StatusCode::NOT_FOUND);
    let (_, backends) = app.admin_call(Method::GET, "/v1/backends", None).await;
    assert!(backends["backends"].as_array().unwrap().iter().all(|b| b["engine"] != "rds"), "{backends}");
}
