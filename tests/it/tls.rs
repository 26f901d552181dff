//! Every connection verifies its peer: the test cluster (like the dev stack's)
//! serves TLS with a certificate its own CA signed for 127.0.0.1, and every
//! pool of the stack connects with `verify-full` against that CA. These tests
//! are the refusals: another CA, another name, no TLS at all.

use sea_orm::ConnectionTrait;
use sea_orm::sqlx::postgres::{PgConnectOptions, PgConnection};
use sea_orm::sqlx::{self, Connection};
use tenantry::dev::SUPERUSER;
use tenantry_core::db::{Tls, TlsMode};

use crate::helpers::*;

fn options(host: &str, port: u16, tls: &Tls) -> PgConnectOptions {
    let tc = cluster();
    tls.apply(
        PgConnectOptions::new()
            .host(host)
            .port(port)
            .database("postgres")
            .username(SUPERUSER)
            .password(&tc.secrets.superuser_password),
    )
}

async fn try_connect(host: &str, port: u16, tls: &Tls) -> Result<(), String> {
    match PgConnection::connect_with(&options(host, port, tls)).await {
        Ok(mut conn) => {
            let ssl: bool = sqlx::query_scalar("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
                .fetch_one(&mut conn)
                .await
                .map_err(|e| e.to_string())?;
            assert!(ssl || tls.mode == TlsMode::Disable, "a connection at {:?} is encrypted", tls.mode);
            Ok(())
        }
        Err(e) => Err(e.to_string()),
    }
}

/// A CA of the test's own, which signed nothing the cluster serves.
fn another_ca() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("tenantry-other-ca-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let out = std::process::Command::new("openssl")
        .args(["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"])
        .args(["-keyout", "ca.key", "-out", "ca.crt", "-days", "2", "-subj", "/CN=Not the cluster's CA"])
        .current_dir(&dir)
        .output()
        .expect("openssl");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    dir.join("ca.crt")
}

#[tokio::test]
async fn a_server_whose_certificate_another_ca_signed_is_refused_at_verify_full_and_verify_ca() {
    let port = cluster().cluster.port();
    let ours = cluster().tls();
    assert_eq!(try_connect("127.0.0.1", port, &ours).await, Ok(()), "control: the cluster's own CA");
    let other = another_ca();
    for mode in [TlsMode::VerifyFull, TlsMode::VerifyCa] {
        let tls = Tls { mode, ca_file: Some(other.clone()) };
        let err = try_connect("127.0.0.1", port, &tls).await.unwrap_err();
        assert!(err.to_lowercase().contains("certificate") || err.contains("tls"), "{mode:?}: {err}");
    }
    // And with no CA bundle, the platform's roots do not know the cluster's CA.
    let err = try_connect("127.0.0.1", port, &Tls::default()).await.unwrap_err();
    assert!(err.to_lowercase().contains("certificate") || err.contains("tls"), "{err}");
}

#[tokio::test]
async fn a_certificate_for_another_name_is_refused_at_verify_full_and_accepted_at_verify_ca() {
    // The cluster's certificate names 127.0.0.1 only; `localhost` reaches the
    // same server under a name the certificate does not carry.
    let port = cluster().cluster.port();
    let ours = cluster().tls();
    let err = try_connect("localhost", port, &ours).await.unwrap_err();
    assert!(err.to_lowercase().contains("certificate") || err.to_lowercase().contains("name"), "{err}");
    let chain_only = Tls { mode: TlsMode::VerifyCa, ..ours };
    assert_eq!(try_connect("localhost", port, &chain_only).await, Ok(()), "verify-ca checks the chain only");
}

#[tokio::test]
async fn a_cleartext_only_server_is_refused_at_require() {
    let port = tenantry::testkit::cleartext_pgbouncer().port;
    let require = Tls { mode: TlsMode::Require, ca_file: None };
    let err = try_connect("127.0.0.1", port, &require).await.unwrap_err();
    assert!(err.to_lowercase().contains("tls") || err.to_lowercase().contains("ssl"), "{err}");
    // Control: the same server in clear, when told to (the dev-only `disable`).
    let clear = Tls { mode: TlsMode::Disable, ca_file: None };
    let _ = try_connect("127.0.0.1", port, &clear).await.map_err(|e| assert!(!e.contains("TLS"), "{e}"));
}

#[tokio::test]
async fn every_connection_of_the_stack_is_encrypted_and_verified() {
    let app = spawn_app().await;
    let t = app.create_tenant("tls-acme", "shared").await;
    app.seed(&t.key, "TLS-1").await;
    let d = app.create_tenant("tls-globex", "dedicated").await;
    app.seed(&d.key, "TLS-2").await;
    assert_eq!(app.get(&t.key, "/v1/assets").await.0, reqwest::StatusCode::OK);
    let superuser = connect("postgres", false);
    // This stack's databases only (other tests' connections come and go).
    let ours =
        format!("'{}', '{}', '{}'", app.pool_name, app.database_of(&d.id).await, app.cp.config().registry_database);
    let q = |cond: &str| {
        format!(
            "SELECT count(*) FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid) \
             WHERE a.usename IN ('tenantry_app', 'tenantry_owner') AND a.backend_type = 'client backend' \
               AND a.datname IN ({ours}) AND {cond}"
        )
    };
    assert!(scalar(&superuser, &q("s.ssl")).await > 0, "the app's and the owner's connections");
    let who = q("NOT s.ssl").replace("count(*)", "string_agg(a.usename || ' ' || a.application_name, ', ')");
    let row =
        superuser.query_one_raw(sea_orm::Statement::from_string(sea_orm::DbBackend::Postgres, who)).await.unwrap();
    let clear: Option<String> = row.and_then(|r| r.try_get_by_index(0).ok()).flatten();
    assert_eq!(clear, None, "none in clear");
}
