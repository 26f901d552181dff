use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// Tenantry: hybrid-tenancy control plane with per-tier PostgreSQL routing.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the embedded development stack: a private PostgreSQL cluster, demo
    /// tenants and both listeners. Ctrl-C stops it; running again reuses the data.
    Dev {
        /// Data folder (cluster, secrets).
        #[arg(long, env = "TENANTRY_DEV_DATA_DIR", default_value = ".tenantry")]
        data_dir: PathBuf,
        /// PostgreSQL port on 127.0.0.1.
        #[arg(long, env = "TENANTRY_DEV_PG_PORT", default_value_t = 54329)]
        pg_port: u16,
        /// App API port on 127.0.0.1.
        #[arg(long, env = "TENANTRY_DEV_APP_PORT", default_value_t = 8080)]
        app_port: u16,
        /// Admin API port on 127.0.0.1.
        #[arg(long, env = "TENANTRY_DEV_ADMIN_PORT", default_value_t = 8081)]
        admin_port: u16,
        /// Admin token (default: generated once and kept in the data folder).
        #[arg(long, env = "TENANTRY_DEV_ADMIN_TOKEN")]
        admin_token: Option<String>,
    },
    /// Serve from configuration (file + TENANTRY_* env): the app API, the
    /// control plane (admin API, console, operation workers), or both.
    Serve {
        #[arg(long, env = "TENANTRY_CONFIG")]
        config: Option<PathBuf>,
        /// What this process runs. `app` needs only `[app]` and never holds the
        /// owner's, the cluster's or cloud credentials.
        #[arg(long, env = "TENANTRY_ROLE", value_enum, default_value = "all")]
        role: tenantry::config::Role,
    },
    /// Tenants, through the admin API.
    Tenants {
        #[command(flatten)]
        admin: tenantry::cli::AdminArgs,
        #[command(subcommand)]
        command: tenantry::cli::TenantCommand,
    },
    /// Legacy estates to adopt tenants from, through the admin API.
    Estates {
        #[command(flatten)]
        admin: tenantry::cli::AdminArgs,
        #[command(subcommand)]
        command: tenantry::cli::EstateCommand,
    },
    /// Operations, through the admin API.
    Operations {
        #[command(flatten)]
        admin: tenantry::cli::AdminArgs,
        #[command(subcommand)]
        command: tenantry::cli::OperationCommand,
    },
    /// Print the SCRAM-SHA-256 secret of the password on standard input, for
    /// `ALTER ROLE .. PASSWORD '<secret>'` or PgBouncer's auth_file: the server
    /// never sees the password, and the app role's (a generated secret) can
    /// carry fewer iterations, which every connection start pays.
    ScramSecret {
        /// PBKDF2 iterations; below 4096 only for a password of 24 characters or more.
        #[arg(long, default_value_t = tenantry_provisioner::scram::DEFAULT_ITERATIONS)]
        iterations: u32,
    },
    /// Migrate the registry, then every backend to the latest tenant schema,
    /// with a progress bar; failing backends are reported and skipped.
    Migrate {
        #[arg(long, env = "TENANTRY_CONFIG")]
        config: Option<PathBuf>,
        /// Backends migrated at once.
        #[arg(long, default_value_t = 8)]
        concurrency: usize,
    },
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Dev { data_dir, pg_port, app_port, admin_port, admin_token } => {
                tenantry::telemetry::init(&Default::default());
                tenantry::dev::run(tenantry::dev::DevOptions { data_dir, pg_port, app_port, admin_port, admin_token })
                    .await
            }
            Command::Serve { config, role } => {
                let settings = tenantry::Settings::load_for(config.as_deref(), role).map_err(anyhow::Error::msg)?;
                tenantry::telemetry::init(&settings.log);
                let stack = tenantry::Stack::start(&settings).await?;
                let (app_port, admin_port) = stack.ports();
                tracing::info!(?role, ?app_port, ?admin_port, "serving");
                stack.run_until_stopped().await.map_err(Into::into)
            }
            Command::Tenants { admin, command } => tenantry::cli::tenants(&admin, command).await,
            Command::Operations { admin, command } => tenantry::cli::operations(&admin, command).await,
            Command::Estates { admin, command } => tenantry::cli::estates(&admin, command).await,
            Command::ScramSecret { iterations } => tenantry::cli::scram_secret(iterations),
            Command::Migrate { config, concurrency } => {
                // Needs only [control_plane] (a Job with the control plane's configuration).
                let role = tenantry::config::Role::ControlPlane;
                let settings = tenantry::Settings::load_for(config.as_deref(), role).map_err(anyhow::Error::msg)?;
                tenantry::telemetry::init(&settings.log);
                let cp = settings.control_plane.as_ref().expect("the control-plane role has its section");
                tenantry::cli::migrate(cp, concurrency).await
            }
        }
    });
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
