//! Command-line operations that print progress bars.

use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};
use tenantry_control_plane::ControlPlane;
use tenantry_control_plane::fleet::Outcome;

fn bar(len: u64, what: &str) -> ProgressBar {
    let bar = ProgressBar::new(len);
    bar.set_style(
        ProgressStyle::with_template("{msg:>12} [{bar:40}] {pos}/{len} ({elapsed})")
            .expect("constant template is valid")
            .progress_chars("=> "),
    );
    bar.set_message(what.to_string());
    bar
}

/// `tenantry migrate`: registry first (on start), then the fleet.
pub async fn migrate(config: &tenantry_control_plane::ControlPlaneConfig, concurrency: usize) -> anyhow::Result<()> {
    let cp = ControlPlane::start(config.clone()).await?;
    let total = cp.migration_status().await?.len() as u64;
    let progress = bar(total, "backends");
    let runs = cp
        .migrate_fleet("cli", concurrency, |done, total| {
            progress.set_length(total as u64);
            progress.set_position(done as u64);
        })
        .await?;
    progress.finish();
    let mut failed = 0;
    for run in &runs {
        match &run.outcome {
            Outcome::Applied { from, to } => println!("  {:<44} {from} -> {to} ({} ms)", run.name, run.duration_ms),
            Outcome::UpToDate { version } => println!("  {:<44} up to date at {version}", run.name),
            Outcome::Failed { error } => {
                failed += 1;
                println!("  {:<44} FAILED: {error}", run.name);
            }
        }
    }
    if failed > 0 {
        anyhow::bail!("{failed} of {} backends failed to migrate; fix them and run again", runs.len());
    }
    println!("{} backends at the latest tenant schema", runs.len());
    Ok(())
}

/// Where the admin API is and how to sign in.
#[derive(clap::Args, Debug)]
pub struct AdminArgs {
    /// Admin API base URL.
    #[arg(long, env = "TENANTRY_ADMIN_URL", default_value = "http://127.0.0.1:8081", global = true)]
    pub admin_url: String,
    /// Admin token.
    #[arg(long, env = "TENANTRY_ADMIN_TOKEN", hide_env_values = true, global = true)]
    pub token: Option<String>,
}

#[derive(clap::Subcommand, Debug)]
pub enum TenantCommand {
    /// Create a tenant; a dedicated one is provisioned by an operation.
    Create {
        #[arg(long)]
        slug: String,
        #[arg(long)]
        name: String,
        /// shared | dedicated
        #[arg(long, default_value = "shared")]
        tier: String,
        #[arg(long)]
        region: Option<String>,
        /// Watch the provisioning until it ends.
        #[arg(long)]
        wait: bool,
    },
    /// List tenants.
    List {
        #[arg(long, default_value_t = 100)]
        limit: u64,
    },
    /// Show one tenant (id or slug) as JSON.
    Show { tenant: String },
    /// Promote a shared tenant to a dedicated database, online; follows the
    /// operation with a progress bar.
    Promote {
        tenant: String,
        /// logical | rds
        #[arg(long, default_value = "logical")]
        engine: String,
        #[arg(long)]
        region: Option<String>,
        /// Return once queued instead of following the operation.
        #[arg(long)]
        no_wait: bool,
    },
    /// Move a tenant, online, to another backend (id from `GET /v1/backends`).
    Move {
        tenant: String,
        #[arg(long)]
        to: String,
        #[arg(long)]
        no_wait: bool,
    },
    /// Demote a dedicated tenant to a shared pool, online; its dedicated
    /// backend is retired afterwards.
    Demote {
        tenant: String,
        /// A shared pool's backend id; default: the least loaded of its region.
        #[arg(long)]
        pool: Option<String>,
        #[arg(long)]
        no_wait: bool,
    },
    /// Dry run of a move: sizes, checks, estimated copy time. Changes nothing.
    Plan {
        tenant: String,
        /// A backend id or name, `dedicated`, `dedicated:rds` or `shared`.
        #[arg(long)]
        target: String,
    },
    /// The tenant's identity providers: the OIDC issuers whose tokens sign its
    /// users in to the app API.
    Idp {
        tenant: String,
        #[command(subcommand)]
        action: IdpCommand,
    },
    /// The people who signed in to the tenant through its identity providers.
    Users {
        tenant: String,
        #[command(subcommand)]
        action: UserCommand,
    },
}

#[derive(clap::Subcommand, Debug)]
pub enum UserCommand {
    /// List them (every page).
    List,
    /// Erase one person (their record and pending sign-ins).
    Erase { id: String },
}

#[derive(clap::Subcommand, Debug)]
pub enum IdpCommand {
    /// Create or replace one from a JSON file (`{"issuer", "audience", ...}`;
    /// `-` reads standard input).
    Put {
        name: String,
        #[arg(long)]
        file: String,
    },
    /// List them.
    List,
    /// Remove one: its users sign in no more.
    Remove { name: String },
    /// Fetch its discovery document and keys, and say what was found.
    Test { name: String },
}

#[derive(clap::Subcommand, Debug)]
pub enum OperationCommand {
    /// Follow an operation with a progress bar until it ends.
    Watch { id: String },
    /// Show one operation as JSON.
    Show { id: String },
}

struct Admin {
    http: reqwest::Client,
    base: String,
    token: String,
}

impl Admin {
    fn new(args: &AdminArgs) -> anyhow::Result<Self> {
        let token = args
            .token
            .clone()
            .ok_or_else(|| anyhow::anyhow!("set --token or TENANTRY_ADMIN_TOKEN (printed by `tenantry dev`)"))?;
        Ok(Self { http: reqwest::Client::new(), base: args.admin_url.trim_end_matches('/').to_string(), token })
    }

    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> anyhow::Result<serde_json::Value> {
        let mut req = self.http.request(method, format!("{}{path}", self.base)).bearer_auth(&self.token);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.map_err(|e| anyhow::anyhow!("admin API at {} unreachable: {e}", self.base))?;
        let status = resp.status();
        let body: serde_json::Value = resp.json().await.unwrap_or(serde_json::Value::Null);
        if !status.is_success() {
            let msg = body["error"]["message"].as_str().unwrap_or("no details");
            let code = body["error"]["code"].as_str().unwrap_or("error");
            anyhow::bail!("{status} {code}: {msg}");
        }
        Ok(body)
    }
}

fn print_json(v: &serde_json::Value) {
    println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
}

#[derive(clap::Subcommand, Debug)]
pub enum EstateCommand {
    /// Register a legacy estate; the password is read from
    /// TENANTRY_ESTATE_PASSWORD (never from the command line).
    Add {
        #[arg(long)]
        name: String,
        #[arg(long)]
        host: String,
        #[arg(long, default_value_t = 5432)]
        port: u16,
        #[arg(long)]
        database: String,
        #[arg(long)]
        user: String,
        /// schema_per_tenant | database_per_tenant
        #[arg(long, default_value = "schema_per_tenant")]
        layout: String,
        /// Schemas (or databases) holding tenants, SQL LIKE: 'tenant\_%'
        #[arg(long)]
        pattern: String,
        /// A mapping as JSON (see GET /openapi.json, Mapping).
        #[arg(long)]
        mapping: Option<String>,
    },
    /// List estates.
    List,
    /// The estate's sources: tables, mapping, sizes, problems, state.
    Sources { estate: String },
    /// The dry run of adopting one source.
    Plan {
        estate: String,
        #[arg(long)]
        source: String,
        /// shared | dedicated
        #[arg(long, default_value = "shared")]
        tier: String,
    },
    /// Adopt one source as a new tenant (progress until it serves).
    Adopt {
        estate: String,
        #[arg(long)]
        source: String,
        #[arg(long)]
        slug: String,
        /// shared | dedicated
        #[arg(long, default_value = "shared")]
        tier: String,
        /// Return once queued.
        #[arg(long)]
        no_wait: bool,
    },
    /// Adopt every source not adopted yet, `concurrency` at once.
    AdoptAll {
        estate: String,
        #[arg(long, default_value = "shared")]
        tier: String,
        #[arg(long, default_value_t = 4)]
        concurrency: i32,
        #[arg(long)]
        no_wait: bool,
    },
    /// Give an adopted source back to its legacy system (progress until done).
    Revert {
        estate: String,
        #[arg(long)]
        source: String,
    },
    /// End the way back for an adopted source (`--drop`: drop its legacy schema or database).
    Release {
        estate: String,
        #[arg(long)]
        source: String,
        #[arg(long)]
        drop: bool,
    },
    /// Forget an estate.
    Remove { estate: String },
}

/// `tenantry estates ...`
pub async fn estates(args: &AdminArgs, command: EstateCommand) -> anyhow::Result<()> {
    let admin = Admin::new(args)?;
    use reqwest::Method;
    match command {
        EstateCommand::Add { name, host, port, database, user, layout, pattern, mapping } => {
            let password = std::env::var("TENANTRY_ESTATE_PASSWORD")
                .map_err(|_| anyhow::anyhow!("set TENANTRY_ESTATE_PASSWORD to the estate user's password"))?;
            let mapping: Option<serde_json::Value> = mapping
                .map(|m| serde_json::from_str(&m))
                .transpose()
                .map_err(|e| anyhow::anyhow!("--mapping is not JSON: {e}"))?;
            let body = serde_json::json!({"name": name, "host": host, "port": port, "database": database,
                "user": user, "password": password, "layout": layout, "pattern": pattern, "mapping": mapping});
            let estate = admin.call(Method::POST, "/v1/estates", Some(body)).await?;
            println!("added estate {} ({})", estate["name"], estate["id"]);
        }
        EstateCommand::List => {
            let list = admin.call(Method::GET, "/v1/estates", None).await?;
            println!("{:<38} {:<20} {:<22} {:<20} pattern", "id", "name", "host", "layout");
            for e in list["estates"].as_array().into_iter().flatten() {
                println!(
                    "{:<38} {:<20} {:<22} {:<20} {}",
                    e["id"].as_str().unwrap_or(""),
                    e["name"].as_str().unwrap_or(""),
                    format!("{}:{}", e["host"].as_str().unwrap_or(""), e["port"]),
                    e["layout"].as_str().unwrap_or(""),
                    e["pattern"].as_str().unwrap_or("")
                );
            }
        }
        EstateCommand::Sources { estate } => {
            let body = admin.call(Method::GET, &format!("/v1/estates/{estate}/sources"), None).await?;
            for s in body["sources"].as_array().into_iter().flatten() {
                println!("{} [{}]", s["name"].as_str().unwrap_or(""), s["state"].as_str().unwrap_or(""));
                for t in s["tables"].as_array().into_iter().flatten() {
                    println!(
                        "  {:<28} -> {:<24} {:>10} rows {:>12} bytes",
                        t["legacy"].as_str().unwrap_or(""),
                        t["target"].as_str().unwrap_or("(none)"),
                        t["rows"],
                        t["bytes"]
                    );
                }
                for p in s["problems"].as_array().into_iter().flatten() {
                    println!("  problem: {}", p.as_str().unwrap_or(""));
                }
            }
        }
        EstateCommand::Plan { estate, source, tier } => {
            let path = format!("/v1/estates/{estate}/adoption-plan?source={source}&tier={tier}");
            let plan = admin.call(Method::GET, &path, None).await?;
            println!("adopt {} -> {} ({})", plan["source"], plan["target"], plan["tier"]);
            for c in plan["checks"].as_array().into_iter().flatten() {
                let mark = if c["ok"] == true { "ok  " } else { "FAIL" };
                println!("  [{mark}] {:<26} {}", c["name"].as_str().unwrap_or(""), c["detail"].as_str().unwrap_or(""));
            }
            println!(
                "  copy ~{:.1} s, pause ~{} ms: {}",
                plan["estimated_copy_secs"].as_f64().unwrap_or(0.0),
                plan["expected_pause_ms"],
                if plan["ready"] == true { "ready" } else { "not ready" }
            );
        }
        EstateCommand::Adopt { estate, source, slug, tier, no_wait } => {
            let body = serde_json::json!({"source": source, "slug": slug, "tier": tier});
            let op = admin.call(Method::POST, &format!("/v1/estates/{estate}/adopt"), Some(body)).await?;
            let id = op["id"].as_str().unwrap_or_default().to_string();
            println!("adopt {source} as {slug}: operation {id}");
            if !no_wait {
                watch(&admin, &id).await?;
                let op = admin.call(Method::GET, &format!("/v1/operations/{id}"), None).await?;
                let p = &op["progress"];
                println!("write pause {} ms, {} rows copied, counts {}", p["pause_ms"], p["rows_copied"], p["counts"]);
            }
        }
        EstateCommand::AdoptAll { estate, tier, concurrency, no_wait } => {
            let body = serde_json::json!({"tier": tier, "concurrency": concurrency});
            let all = admin.call(Method::POST, &format!("/v1/estates/{estate}/adopt-all"), Some(body)).await?;
            let queued = all["queued"].as_array().cloned().unwrap_or_default();
            let ids: Vec<String> =
                queued.iter().filter_map(|q| q["operation"]["id"].as_str().map(String::from)).collect();
            for q in queued.iter().filter(|q| q["error"].is_string()) {
                println!("  {} not queued: {}", q["source"].as_str().unwrap_or(""), q["error"].as_str().unwrap_or(""));
            }
            println!("{} adoptions queued (batch {})", ids.len(), all["batch"].as_str().unwrap_or(""));
            if !no_wait {
                watch_all(&admin, &ids).await?;
            }
        }
        EstateCommand::Revert { estate, source } => {
            let body = serde_json::json!({"source": source});
            let op = admin.call(Method::POST, &format!("/v1/estates/{estate}/revert"), Some(body)).await?;
            let id = op["id"].as_str().unwrap_or_default().to_string();
            println!("revert {source}: operation {id}");
            watch(&admin, &id).await?;
        }
        EstateCommand::Release { estate, source, drop } => {
            let body = serde_json::json!({"source": source, "drop": drop});
            admin.call(Method::POST, &format!("/v1/estates/{estate}/release"), Some(body)).await?;
            println!("released {source}{}", if drop { " (legacy data dropped)" } else { "" });
        }
        EstateCommand::Remove { estate } => {
            admin.call(Method::DELETE, &format!("/v1/estates/{estate}"), None).await?;
            println!("removed estate {estate}");
        }
    }
    Ok(())
}

/// `tenantry tenants ...`
/// `tenantry scram-secret`: one line of standard input (the password) to its
/// SCRAM secret on standard output, under the same rule as
/// `control_plane.app_scram_iterations`.
pub fn scram_secret(iterations: u32) -> anyhow::Result<()> {
    let mut line = String::new();
    std::io::stdin().read_line(&mut line).context("reading the password from standard input")?;
    let password = line.trim_end_matches(['\r', '\n']);
    anyhow::ensure!(!password.is_empty(), "no password on standard input");
    let secret: secrecy::SecretString = password.to_string().into();
    tenantry_control_plane::config::check_scram_iterations(iterations, Some(&secret))
        .map_err(|e| anyhow::anyhow!(e.replace("control_plane.app_scram_iterations", "--iterations")))?;
    println!("{}", tenantry_provisioner::scram::scram_secret(password, iterations));
    Ok(())
}

pub async fn tenants(args: &AdminArgs, command: TenantCommand) -> anyhow::Result<()> {
    let admin = Admin::new(args)?;
    match command {
        TenantCommand::Create { slug, name, tier, region, wait } => {
            let created = admin
                .call(
                    reqwest::Method::POST,
                    "/v1/tenants",
                    Some(serde_json::json!({"slug": slug, "name": name, "tier": tier, "region": region})),
                )
                .await?;
            println!("created tenant {} ({})", created["tenant"]["slug"], created["tenant"]["id"]);
            if let Some(op) = created["operation"]["id"].as_str() {
                println!("provisioning: operation {op}");
                if wait {
                    return watch(&admin, op).await;
                }
            }
            Ok(())
        }
        TenantCommand::List { limit } => {
            let page = admin.call(reqwest::Method::GET, &format!("/v1/tenants?limit={limit}"), None).await?;
            println!("{:<38} {:<24} {:<10} {:<13} backend", "id", "slug", "tier", "status");
            for t in page["tenants"].as_array().into_iter().flatten() {
                println!(
                    "{:<38} {:<24} {:<10} {:<13} {}",
                    t["id"].as_str().unwrap_or(""),
                    t["slug"].as_str().unwrap_or(""),
                    t["tier"].as_str().unwrap_or(""),
                    t["status"].as_str().unwrap_or(""),
                    t["placement"]["backend_name"].as_str().unwrap_or("-"),
                );
            }
            Ok(())
        }
        TenantCommand::Show { tenant } => {
            print_json(&admin.call(reqwest::Method::GET, &format!("/v1/tenants/{tenant}"), None).await?);
            Ok(())
        }
        TenantCommand::Promote { tenant, engine, region, no_wait } => {
            let body = serde_json::json!({"engine": engine, "region": region});
            start_move(&admin, &tenant, "promote", body, no_wait).await
        }
        TenantCommand::Move { tenant, to, no_wait } => {
            start_move(&admin, &tenant, "move", serde_json::json!({"target_backend_id": to}), no_wait).await
        }
        TenantCommand::Demote { tenant, pool, no_wait } => {
            start_move(&admin, &tenant, "demote", serde_json::json!({"target_pool_id": pool}), no_wait).await
        }
        TenantCommand::Idp { tenant, action } => idp(&admin, &tenant, action).await,
        TenantCommand::Users { tenant, action } => users(&admin, &tenant, action).await,
        TenantCommand::Plan { tenant, target } => {
            let path = format!("/v1/tenants/{tenant}/move-plan?target={}", urlencode(&target));
            let plan = admin.call(reqwest::Method::GET, &path, None).await?;
            println!(
                "{} {} -> {} ({})",
                plan["kind"].as_str().unwrap_or(""),
                plan["source"]["name"].as_str().unwrap_or(""),
                plan["target"]["name"].as_str().unwrap_or(""),
                plan["target"]["engine"].as_str().unwrap_or("")
            );
            for t in plan["tables"].as_array().into_iter().flatten() {
                println!("  {:<28} {:>12} rows {:>14} bytes", t["table"].as_str().unwrap_or(""), t["rows"], t["bytes"]);
            }
            for c in plan["checks"].as_array().into_iter().flatten() {
                let mark = if c["ok"] == true { "ok  " } else { "FAIL" };
                println!("  [{mark}] {:<26} {}", c["name"].as_str().unwrap_or(""), c["detail"].as_str().unwrap_or(""));
            }
            println!(
                "estimated copy {:.1} s; writes pause at most {} ms at the cutover; {}",
                plan["estimated_copy_secs"].as_f64().unwrap_or(0.0),
                plan["max_write_pause_ms"],
                if plan["ready"] == true { "ready" } else { "NOT ready" }
            );
            Ok(())
        }
    }
}

async fn idp(admin: &Admin, tenant: &str, action: IdpCommand) -> anyhow::Result<()> {
    let base = format!("/v1/tenants/{}/identity-providers", urlencode(tenant));
    match action {
        IdpCommand::Put { name, file } => {
            let text = if file == "-" {
                std::io::read_to_string(std::io::stdin())?
            } else {
                std::fs::read_to_string(&file).map_err(|e| anyhow::anyhow!("{file}: {e}"))?
            };
            let body: serde_json::Value = serde_json::from_str(&text).map_err(|e| anyhow::anyhow!("{file}: {e}"))?;
            let path = format!("{base}/{}", urlencode(&name));
            print_json(&admin.call(reqwest::Method::PUT, &path, Some(body)).await?);
        }
        IdpCommand::List => {
            let list = admin.call(reqwest::Method::GET, &base, None).await?;
            for p in list["identity_providers"].as_array().into_iter().flatten() {
                println!(
                    "{:<20} {:<50} org {}",
                    p["name"].as_str().unwrap_or(""),
                    p["issuer"].as_str().unwrap_or(""),
                    p["org_value"].as_str().unwrap_or("-")
                );
            }
        }
        IdpCommand::Remove { name } => {
            admin.call(reqwest::Method::DELETE, &format!("{base}/{}", urlencode(&name)), None).await?;
            println!("removed identity provider {name}");
        }
        IdpCommand::Test { name } => {
            let test = admin.call(reqwest::Method::POST, &format!("{base}/{}/test", urlencode(&name)), None).await?;
            println!("keys at {}", test["jwks_uri"].as_str().unwrap_or("(none found)"));
            for k in test["keys"].as_array().into_iter().flatten() {
                println!(
                    "  {:<48} {}",
                    k["kid"].as_str().unwrap_or("(no kid)"),
                    k["algorithm"].as_str().unwrap_or("unused")
                );
            }
            for p in test["problems"].as_array().into_iter().flatten() {
                println!("  problem: {}", p.as_str().unwrap_or(""));
            }
            println!("{}", if test["ok"] == true { "ok" } else { "NOT ok" });
        }
    }
    Ok(())
}

async fn users(admin: &Admin, tenant: &str, action: UserCommand) -> anyhow::Result<()> {
    let base = format!("/v1/tenants/{}/users", urlencode(tenant));
    match action {
        UserCommand::List => {
            let mut after: Option<String> = None;
            loop {
                let path = match &after {
                    Some(a) => format!("{base}?limit=1000&after={a}"),
                    None => format!("{base}?limit=1000"),
                };
                let page = admin.call(reqwest::Method::GET, &path, None).await?;
                for u in page["users"].as_array().into_iter().flatten() {
                    println!(
                        "{}  {:<32} {:<10} last seen {}",
                        u["id"].as_str().unwrap_or(""),
                        u["email"].as_str().or(u["subject"].as_str()).unwrap_or(""),
                        u["role"].as_str().unwrap_or(""),
                        u["last_seen"].as_str().unwrap_or("")
                    );
                }
                match page["next"].as_str() {
                    Some(n) => after = Some(n.to_string()),
                    None => break,
                }
            }
        }
        UserCommand::Erase { id } => {
            admin.call(reqwest::Method::DELETE, &format!("{base}/{}", urlencode(&id)), None).await?;
            println!("erased user {id}");
        }
    }
    Ok(())
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

async fn start_move(
    admin: &Admin,
    tenant: &str,
    kind: &str,
    body: serde_json::Value,
    no_wait: bool,
) -> anyhow::Result<()> {
    let op = admin.call(reqwest::Method::POST, &format!("/v1/tenants/{tenant}/{kind}"), Some(body)).await?;
    let id = op["id"].as_str().unwrap_or_default().to_string();
    println!("{kind}: operation {id}");
    if no_wait {
        return Ok(());
    }
    watch(admin, &id).await?;
    let op = admin.call(reqwest::Method::GET, &format!("/v1/operations/{id}"), None).await?;
    let p = &op["progress"];
    println!(
        "write pause {} ms, {} rows copied, verified by {}",
        p["pause_ms"],
        p["rows_copied"],
        p["verified"].as_str().unwrap_or("-")
    );
    Ok(())
}

/// `tenantry operations ...`
pub async fn operations(args: &AdminArgs, command: OperationCommand) -> anyhow::Result<()> {
    let admin = Admin::new(args)?;
    match command {
        OperationCommand::Watch { id } => watch(&admin, &id).await,
        OperationCommand::Show { id } => {
            print_json(&admin.call(reqwest::Method::GET, &format!("/v1/operations/{id}"), None).await?);
            Ok(())
        }
    }
}

/// One bar over many operations: how many have ended; the failures listed.
async fn watch_all(admin: &Admin, ids: &[String]) -> anyhow::Result<()> {
    let progress = bar(ids.len() as u64, "adoptions");
    let mut failed = Vec::new();
    let mut open: Vec<&String> = ids.iter().collect();
    while !open.is_empty() {
        let mut still = Vec::new();
        for id in open {
            let op = admin.call(reqwest::Method::GET, &format!("/v1/operations/{id}"), None).await?;
            match op["state"].as_str().unwrap_or("") {
                "succeeded" => progress.inc(1),
                "failed" | "cancelled" => {
                    progress.inc(1);
                    failed.push(format!("{id}: {}", op["error"].as_str().unwrap_or("no error recorded")));
                }
                _ => still.push(id),
            }
        }
        open = still;
        if !open.is_empty() {
            tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        }
    }
    progress.finish();
    for f in &failed {
        println!("  failed {f}");
    }
    println!("{} adopted, {} failed", ids.len() - failed.len(), failed.len());
    Ok(())
}

async fn watch(admin: &Admin, id: &str) -> anyhow::Result<()> {
    let progress = bar(1, "starting");
    progress.set_style(
        ProgressStyle::with_template("{msg:>28} [{bar:40}] {pos}/{len} steps ({elapsed})")
            .expect("constant template is valid")
            .progress_chars("=> "),
    );
    loop {
        let op = admin.call(reqwest::Method::GET, &format!("/v1/operations/{id}"), None).await?;
        progress.set_length(op["progress"]["steps"].as_u64().unwrap_or(1));
        progress.set_position(op["progress"]["step"].as_u64().unwrap_or(0));
        let p = &op["progress"];
        let detail = match op["step"].as_str().unwrap_or("") {
            "copy" => format!(
                "copy {}/{} rows",
                p["rows_copied"].as_i64().unwrap_or(0),
                p["rows_total"].as_i64().unwrap_or(0)
            ),
            "catch_up" => format!("catch up, lag {} B", p["lag_bytes"].as_i64().unwrap_or(0)),
            "cutover" if p["rows_compared"].is_i64() => format!("verify {} rows", p["rows_compared"]),
            "release_source" if p["rows_purged"].is_i64() => format!("purge {} rows", p["rows_purged"]),
            step => step.to_string(),
        };
        progress.set_message(detail);
        match op["state"].as_str().unwrap_or("") {
            "succeeded" => {
                progress.finish_with_message("done");
                println!("operation {id} succeeded");
                return Ok(());
            }
            state @ ("failed" | "cancelled") => {
                progress.abandon_with_message(state.to_string());
                anyhow::bail!("operation {id} {state}: {}", op["error"].as_str().unwrap_or("no error recorded"));
            }
            _ => tokio::time::sleep(std::time::Duration::from_millis(200)).await,
        }
    }
}
