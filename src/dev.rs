//! `tenantry dev`: the embedded stack. A private PostgreSQL cluster under a
//! local data folder, the registry and one shared pool on it, demo tenants
//! `acme` (shared) and `globex` (dedicated), and both listeners. Running it
//! again reuses the data. The test harness builds on the same pieces.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::Context;
use rand::RngCore;
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};

use tenantry_app::AppConfig;
use tenantry_app::config::RegistryAddress;
use tenantry_control_plane::{ClusterConfig, ControlPlane, ControlPlaneConfig};
use tenantry_core::db::Credentials;
use tenantry_core::{BackendKind, TenantSlug, Tier};
use tenantry_provisioner::{ClusterSpec, LocalCluster, LogicalProvisioner, RoleCredentials};

use crate::Settings;

pub const OWNER_ROLE: &str = "tenantry_owner";
pub const APP_ROLE: &str = "tenantry_app";
pub const SUPERUSER: &str = "postgres";
/// The dev app role's SCRAM iterations: its password is 16 random bytes
/// (32 hex characters), which no count of rounds makes harder to guess, and
/// each connection start pays them (`tenantry_provisioner::scram`).
pub const APP_SCRAM_ITERATIONS: u32 = 16;
/// Name of the demo shared pool.
pub const SHARED_POOL: &str = "shared_pool_1";

/// Passwords of a dev cluster, made on first start and kept (mode 0600) in
/// `<data>/secrets.json`, with the demo tenants' API keys.
#[derive(Serialize, Deserialize, Clone)]
pub struct DevSecrets {
    pub superuser_password: String,
    pub owner_password: String,
    pub app_password: String,
    pub admin_token: String,
    /// The tenant gate's key (both sides); a data folder made before it
    /// existed gets one at its next start.
    #[serde(default)]
    pub gate_key: String,
    #[serde(default)]
    pub demo_keys: Vec<(String, String)>,
}

pub fn random_secret(bytes: usize) -> String {
    let mut b = vec![0u8; bytes];
    rand::rng().fill_bytes(&mut b);
    b.iter().map(|x| format!("{x:02x}")).collect()
}

impl DevSecrets {
    pub fn generate() -> Self {
        Self {
            superuser_password: random_secret(16),
            owner_password: random_secret(16),
            app_password: random_secret(16),
            admin_token: random_secret(24),
            gate_key: random_secret(32),
            demo_keys: vec![],
        }
    }

    /// The gate keys both sides of the stack use.
    pub fn gate_keys(&self) -> tenantry_core::gate::GateKeys {
        tenantry_core::gate::GateKeys { current: self.gate_key.clone().into(), previous: None }
    }

    fn load_or_create(path: &Path) -> anyhow::Result<Self> {
        if path.exists() {
            let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
            let mut secrets: Self =
                serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
            if secrets.gate_key.is_empty() {
                secrets.gate_key = random_secret(32);
                secrets.save(path)?;
            }
            return Ok(secrets);
        }
        let s = Self::generate();
        s.save(path)?;
        Ok(s)
    }

    fn save(&self, path: &Path) -> anyhow::Result<()> {
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(true)
            .mode(0o600)
            .open(path)
            .with_context(|| format!("writing {}", path.display()))?;
        std::io::Write::write_all(&mut f, serde_json::to_string_pretty(self)?.as_bytes())?;
        Ok(())
    }
}

/// Creates (or re-keys) the owner and app roles on a cluster.
pub async fn prepare_roles(cluster: &LocalCluster, secrets: &DevSecrets) -> anyhow::Result<()> {
    let owner = RoleCredentials::new(OWNER_ROLE, secrets.owner_password.clone().into());
    let app =
        RoleCredentials::new(APP_ROLE, secrets.app_password.clone().into()).with_scram_iterations(APP_SCRAM_ITERATIONS);
    superuser(cluster, secrets).await?.ensure_roles(&owner, &app).await?;
    Ok(())
}

async fn superuser(cluster: &LocalCluster, secrets: &DevSecrets) -> anyhow::Result<LogicalProvisioner> {
    let password = SecretString::from(secrets.superuser_password.clone());
    let tls = verified(&cluster.ca_file());
    Ok(LogicalProvisioner::connect("127.0.0.1", cluster.port(), SUPERUSER, &password, |o| tls.apply(o)).await?)
}

/// Creates the registry database (owned by the owner role) when absent.
pub async fn create_registry(cluster: &LocalCluster, secrets: &DevSecrets, registry_db: &str) -> anyhow::Result<()> {
    let admin = superuser(cluster, secrets).await?;
    admin.create_database(registry_db, OWNER_ROLE, None).await?;
    admin.grant_connect(registry_db, APP_ROLE).await?;
    Ok(())
}

/// Every connection to a local cluster verifies its certificate against the
/// CA the cluster made (`LocalCluster::ca_file`), as in production.
pub fn verified(ca_file: &Path) -> tenantry_core::db::Tls {
    tenantry_core::db::Tls { mode: tenantry_core::db::TlsMode::VerifyFull, ca_file: Some(ca_file.to_path_buf()) }
}

/// Settings for a stack on a local cluster.
pub fn settings_for(
    pg_port: u16,
    ca_file: &Path,
    secrets: &DevSecrets,
    registry_db: &str,
    app_listen: SocketAddr,
    admin_listen: SocketAddr,
) -> Settings {
    Settings {
        app: AppConfig {
            listen: app_listen,
            registry: RegistryAddress {
                host: "127.0.0.1".into(),
                port: pg_port,
                database: registry_db.into(),
                tls: verified(ca_file),
            },
            backend_tls: verified(ca_file),
            credentials: Credentials { user: APP_ROLE.into(), password: secrets.app_password.clone().into() },
            gate: secrets.gate_keys(),
            max_connections_total: 64,
            connections_per_pool: 8,
            connection_wait_ms: 2000,
            pool_idle_secs: 300,
            cache_ttl_secs: 60,
            token_key_refetch_secs: 30,
            workers: 2,
            baseline: None,
            listen_for_changes: true,
            usage_flush_ms: 2000,
            jobs: Default::default(),
        },
        control_plane: ControlPlaneConfig {
            listen: admin_listen,
            admin_token: secrets.admin_token.clone().into(),
            admin_token_enabled: true,
            staff: None,
            // Served over plain HTTP on loopback.
            console_secure_cookie: false,
            console_idle_minutes: 30,
            gate: secrets.gate_keys(),
            // Derived from a generated secret of this data folder, never printed.
            secrets_key: Some(format!("estates:{}", secrets.owner_password).into()),
            registry_database: registry_db.into(),
            template_database: format!("{registry_db}_template"),
            lease_secs: 30,
            operation_workers: 1,
            owner: Credentials { user: OWNER_ROLE.into(), password: secrets.owner_password.clone().into() },
            app_role: APP_ROLE.into(),
            app_password: Some(secrets.app_password.clone().into()),
            app_scram_iterations: APP_SCRAM_ITERATIONS,
            rds: None,
            rds_bootstrap_override: None,
            backend_tls: verified(ca_file),
            estate_tls: verified(ca_file),
            cluster: ClusterConfig {
                host: "127.0.0.1".into(),
                port: pg_port,
                admin_user: SUPERUSER.into(),
                admin_password: secrets.superuser_password.clone().into(),
                region: "local".into(),
                tls: verified(ca_file),
            },
            default_region: "local".into(),
            workers: 1,
            moves: Default::default(),
            erase_final_snapshot: false,
            // Small installations: measure often so a new user sees figures soon.
            usage: tenantry_control_plane::config::UsageConfig {
                rollup_interval_ms: 5000,
                storage_interval_secs: 30,
                ..Default::default()
            },
            reports: Default::default(),
        },
        log: Default::default(),
    }
}

/// Options of `tenantry dev`.
pub struct DevOptions {
    pub data_dir: PathBuf,
    pub pg_port: u16,
    pub app_port: u16,
    pub admin_port: u16,
    pub admin_token: Option<String>,
}

/// Runs the embedded stack until Ctrl-C.
pub async fn run(opts: DevOptions) -> anyhow::Result<()> {
    std::fs::create_dir_all(&opts.data_dir).with_context(|| format!("creating {}", opts.data_dir.display()))?;
    let data_dir = opts.data_dir.canonicalize()?;
    let secrets_path = data_dir.join("secrets.json");
    let mut secrets = DevSecrets::load_or_create(&secrets_path)?;
    if let Some(token) = opts.admin_token {
        secrets.admin_token = token;
        secrets.save(&secrets_path)?;
    }
    println!("starting PostgreSQL on 127.0.0.1:{} (data in {})", opts.pg_port, data_dir.display());
    let spec = ClusterSpec {
        base_dir: data_dir.clone(),
        port: opts.pg_port,
        superuser: SUPERUSER.into(),
        superuser_password: secrets.superuser_password.clone(),
        settings: ClusterSpec::base_settings(200),
    };
    let mut cluster = tokio::task::spawn_blocking(move || LocalCluster::start(spec)).await??;
    let result =
        serve(&cluster, &mut secrets, &secrets_path, &opts_addr(opts.app_port), &opts_addr(opts.admin_port)).await;
    println!("stopping PostgreSQL");
    cluster.stop();
    result
}

fn opts_addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

async fn serve(
    cluster: &LocalCluster,
    secrets: &mut DevSecrets,
    secrets_path: &Path,
    app: &SocketAddr,
    admin: &SocketAddr,
) -> anyhow::Result<()> {
    prepare_roles(cluster, secrets).await?;
    create_registry(cluster, secrets, "tenantry").await?;
    let settings = settings_for(cluster.port(), &cluster.ca_file(), secrets, "tenantry", *app, *admin);
    let stack = crate::Stack::build(&settings).await?;
    let cp = stack.control_plane();
    cp.register_backend("dev", SHARED_POOL, BackendKind::SharedPool).await?;
    let mut changed = false;
    for (slug, name, tier) in [("acme", "Acme Corporation", Tier::Shared), ("globex", "Globex Inc.", Tier::Dedicated)] {
        if cp.tenant(slug).await.is_err() {
            let tenant = cp
                .create_tenant(
                    "dev",
                    tenantry_control_plane::tenants::NewTenant {
                        engine: None,
                        slug: TenantSlug::parse(slug).expect("demo slugs are valid"),
                        name: name.into(),
                        tier,
                        region: None,
                    },
                )
                .await?;
            if let Some(op) = &tenant.operation {
                println!("provisioning {slug}'s dedicated database (operation {})", op.id);
                let done = cp.wait_operation(op.id, std::time::Duration::from_secs(120)).await?;
                anyhow::ensure!(
                    done.state == tenantry_control_plane::operation::OperationState::Succeeded,
                    "provisioning {slug} ended {}: {:?}",
                    done.state,
                    done.error
                );
            }
            let key = cp.create_api_key("dev", tenant.tenant.id, "demo").await?;
            secrets.demo_keys.retain(|(s, _)| s != slug);
            secrets.demo_keys.push((slug.to_string(), key.key.clone()));
            changed = true;
            seed_tenant(&stack, &key.key, slug).await?;
        }
    }
    if changed {
        secrets.save(secrets_path)?;
    }
    print_banner(&stack, secrets, cp.as_ref()).await;
    let handles = stack.handles();
    let run = stack.run_until_stopped();
    tokio::select! {
        r = run => r?,
        _ = tokio::signal::ctrl_c() => {
            println!("\nCtrl-C: stopping");
            for h in handles { h.stop(true).await; }
        }
    }
    Ok(())
}

/// A few assets, schedules and issues per demo tenant, written through the
/// same request path as the API.
async fn seed_tenant(stack: &crate::Stack, key: &str, slug: &str) -> anyhow::Result<()> {
    use tenantry_app::data;
    let resolver = stack.resolver();
    let owner = resolver.authenticate(key).await.map_err(|e| anyhow::anyhow!("{e}"))?;
    let tx = resolver.enter(&owner).await.map_err(|e| anyhow::anyhow!("{e}"))?;
    let items = [
        ("Forklift", "FL", "vehicles", "Warehouse A"),
        ("Air compressor", "AC", "tools", "Workshop"),
        ("Server rack", "SR", "it", "Data room"),
    ];
    for (i, (name, prefix, category, location)) in items.into_iter().enumerate() {
        let asset = data::create_asset(
            &tx,
            data::NewAsset {
                name: format!("{name} ({slug})"),
                tag: format!("{}-{prefix}-{:03}", slug.to_uppercase(), i + 1),
                category: category.into(),
                location: location.into(),
                status: "active".into(),
                attributes: serde_json::json!({"seeded": true}),
            },
        )
        .await?;
        data::create_schedule(
            &tx,
            data::NewSchedule {
                asset_id: asset.id,
                title: format!("Inspect {name}"),
                interval_days: 30 * (i as i32 + 1),
                next_due_at: chrono_now_plus_days(7 * i as i64),
            },
        )
        .await?;
        data::create_issue(
            &tx,
            data::NewIssue {
                asset_id: asset.id,
                title: format!("{name}: routine check found wear"),
                description: "Seeded by tenantry dev".into(),
                status: "open".into(),
                priority: "medium".into(),
            },
        )
        .await?;
    }
    tx.commit().await?;
    Ok(())
}

fn chrono_now_plus_days(days: i64) -> chrono::DateTime<chrono::Utc> {
    chrono::Utc::now() + chrono::Duration::days(days)
}

async fn print_banner(stack: &crate::Stack, secrets: &DevSecrets, cp: &ControlPlane) {
    let app = format!("http://127.0.0.1:{}", stack.app_port());
    let admin = format!("http://127.0.0.1:{}", stack.admin_port());
    let token = SecretString::from(secrets.admin_token.clone());
    println!("\nTenantry dev stack is up.\n");
    println!("  app API    {app}   (OpenAPI: {app}/openapi.json)");
    println!("  admin API  {admin}   (OpenAPI: {admin}/openapi.json)");
    println!("  admin token  {}", token.expose_secret());
    println!("\n  console    {admin}/console   (sign in with your name and the admin token above;");
    println!("                                  open acme and press \"Promote to dedicated\")\n");
    for (slug, key) in &secrets.demo_keys {
        let tier = cp.tenant(slug).await.map(|t| t.tier.to_string()).unwrap_or_default();
        println!("  API key of {slug:<7} ({tier:<9}) {key}");
    }
    println!("\nTry:");
    if let Some((_, key)) = secrets.demo_keys.first() {
        println!("  curl -s -H 'Authorization: Bearer {key}' {app}/v1/assets");
        println!("  curl -s -H 'Authorization: Bearer {key}' {app}/v1/tenant");
    }
    println!("  curl -s -H 'Authorization: Bearer {}' {admin}/v1/tenants", token.expose_secret());
    println!(
        "  curl -s -X POST -H 'Authorization: Bearer {}' -H 'Content-Type: application/json' \\\n       -d '{{\"slug\":\"initech\",\"name\":\"Initech\",\"tier\":\"dedicated\"}}' {admin}/v1/tenants",
        token.expose_secret()
    );
    println!("\nCtrl-C stops everything; running `tenantry dev` again reuses the data.");
}
