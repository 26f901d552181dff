//! AWS RDS for PostgreSQL instances for dedicated tenants, through
//! `aws-sdk-rds`. Identifiers are derived from the caller's id, so a retry
//! finds the instance it created and never makes a second one. The master
//! password is derived (HMAC-SHA256 of the identifier under a configured key):
//! it is never stored or logged, and a resumed operation can always recompute
//! it.

use std::time::Duration;

use aws_sdk_rds::Client;
use aws_sdk_rds::error::DisplayErrorContext;
use aws_sdk_rds::types::Tag;
use hmac::{Hmac, Mac};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use sha2::Sha256;

/// Where and how instances are made. Every field documents its default.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RdsConfig {
    /// AWS region of new instances (a tenant's region overrides it). Default `us-east-1`.
    #[serde(default = "default_region")]
    pub region: String,
    /// API endpoint override (tests: a local RDS emulator). Default: the AWS endpoint.
    #[serde(default)]
    pub endpoint_url: Option<String>,
    /// Static credentials (tests only); default: the standard AWS credential chain.
    #[serde(default)]
    pub static_credentials: Option<StaticCredentials>,
    /// Default `db.t4g.medium`.
    #[serde(default = "default_class")]
    pub instance_class: String,
    /// Default `15`.
    #[serde(default = "default_engine_version")]
    pub engine_version: String,
    /// GiB. Default 20.
    #[serde(default = "default_storage")]
    pub allocated_storage: i32,
    /// KMS key for storage encryption (encryption is always on). Default: the AWS-managed key.
    #[serde(default)]
    pub kms_key_id: Option<String>,
    /// Default: none (the account's default VPC).
    #[serde(default)]
    pub db_subnet_group: Option<String>,
    #[serde(default)]
    pub vpc_security_group_ids: Vec<String>,
    /// A parameter group with `rds.logical_replication = 1` (needed for online moves).
    #[serde(default)]
    pub parameter_group: Option<String>,
    /// Days of automated backups. Default 7.
    #[serde(default = "default_backups")]
    pub backup_retention_days: i32,
    /// Default `tenantry_master`.
    #[serde(default = "default_master")]
    pub master_username: String,
    /// Key the master passwords are derived from.
    pub master_password_key: SecretString,
    /// How long to wait for `available` / deletion. Default 1800 s.
    #[serde(default = "default_deadline")]
    pub wait_secs: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StaticCredentials {
    pub access_key_id: String,
    pub secret_access_key: SecretString,
}

fn default_region() -> String {
    "us-east-1".into()
}
fn default_class() -> String {
    "db.t4g.medium".into()
}
fn default_engine_version() -> String {
    "15".into()
}
fn default_storage() -> i32 {
    20
}
fn default_backups() -> i32 {
    7
}
fn default_master() -> String {
    "tenantry_master".into()
}
fn default_deadline() -> u64 {
    1800
}

#[derive(Debug, thiserror::Error)]
pub enum RdsError {
    /// RDS rejected the request itself (invalid or missing parameters,
    /// quotas): retrying the same request cannot succeed.
    #[error("RDS rejected the request: {0}")]
    Rejected(String),
    /// Transport failures, throttling, server errors: worth retrying.
    #[error("RDS request failed: {0}")]
    Api(String),
    #[error("instance {id} did not become {wanted} within {secs} s (last status: {last})")]
    Timeout { id: String, wanted: &'static str, secs: u64, last: String },
    #[error("instance {0} is in state `{1}`, which cannot become available")]
    Unusable(String, String),
}

/// An instance's address once it is available.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceEndpoint {
    pub host: String,
    pub port: u16,
}

/// Facts about one instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Instance {
    pub id: String,
    pub status: String,
    pub endpoint: Option<InstanceEndpoint>,
    pub encrypted: bool,
    pub deletion_protection: bool,
}

#[derive(Clone)]
pub struct RdsProvisioner {
    client: Client,
    cfg: RdsConfig,
}

fn api<E, R>(e: aws_sdk_rds::error::SdkError<E, R>) -> RdsError
where
    E: std::error::Error + aws_sdk_rds::error::ProvideErrorMetadata + Send + Sync + 'static,
    R: std::fmt::Debug + 'static,
{
    match e.as_service_error() {
        // The service answered: say what it said, in its words.
        Some(s) => {
            let code = s.code().unwrap_or("UnknownError");
            let text = format!("{code}: {}", s.message().unwrap_or("no message"));
            if code.contains("Throttl") { RdsError::Api(text) } else { RdsError::Rejected(text) }
        }
        None => RdsError::Api(DisplayErrorContext(&e).to_string()),
    }
}

impl RdsError {
    /// Whether retrying the same request could succeed.
    pub fn is_permanent(&self) -> bool {
        matches!(self, RdsError::Rejected(_) | RdsError::Unusable(..))
    }
}

/// The deterministic instance identifier for an owner id (letters, digits and
/// single hyphens, starting with a letter, at most 63 characters).
pub fn instance_id(owner: &str) -> String {
    let clean: String = owner.chars().filter(|c| c.is_ascii_alphanumeric()).collect::<String>().to_ascii_lowercase();
    format!("tenantry-{}", &clean[..clean.len().min(50)])
}

/// The final snapshot taken when an instance is retired.
pub fn final_snapshot_id(instance: &str) -> String {
    format!("{instance}-final")
}

impl RdsProvisioner {
    pub async fn new(cfg: RdsConfig) -> Self {
        let http = aws_smithy_http_client::Builder::new()
            .tls_provider(aws_smithy_http_client::tls::Provider::Rustls(
                aws_smithy_http_client::tls::rustls_provider::CryptoMode::Ring,
            ))
            .build_https();
        let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest())
            .region(aws_config::Region::new(cfg.region.clone()))
            .http_client(http);
        if let Some(url) = &cfg.endpoint_url {
            loader = loader.endpoint_url(url);
        }
        if let Some(c) = &cfg.static_credentials {
            loader = loader.credentials_provider(aws_sdk_rds::config::Credentials::new(
                c.access_key_id.clone(),
                c.secret_access_key.expose_secret().to_string(),
                None,
                None,
                "tenantry-static",
            ));
        }
        let sdk = loader.load().await;
        Self { client: Client::new(&sdk), cfg }
    }

    pub fn config(&self) -> &RdsConfig {
        &self.cfg
    }

    /// The master password of `instance`, derived, never stored.
    pub fn master_password(&self, instance: &str) -> SecretString {
        let mut mac = Hmac::<Sha256>::new_from_slice(self.cfg.master_password_key.expose_secret().as_bytes())
            .expect("HMAC takes keys of any length");
        mac.update(instance.as_bytes());
        SecretString::from(hex::encode(mac.finalize().into_bytes()))
    }

    /// The instance, or `None` when it does not exist.
    pub async fn describe(&self, id: &str) -> Result<Option<Instance>, RdsError> {
        match self.client.describe_db_instances().db_instance_identifier(id).send().await {
            Ok(out) => Ok(out.db_instances().first().map(|i| Instance {
                id: id.to_string(),
                status: i.db_instance_status().unwrap_or("unknown").to_string(),
                endpoint: i.endpoint().and_then(|e| {
                    Some(InstanceEndpoint { host: e.address()?.to_string(), port: u16::try_from(e.port()?).ok()? })
                }),
                encrypted: i.storage_encrypted().unwrap_or(false),
                deletion_protection: i.deletion_protection().unwrap_or(false),
            })),
            Err(e) if e.as_service_error().is_some_and(|s| s.is_db_instance_not_found_fault()) => Ok(None),
            Err(e) => Err(api(e)),
        }
    }

    /// Creates the instance unless it exists (safe to repeat): encrypted,
    /// deletion-protected, backed up, tagged.
    pub async fn ensure_instance(&self, id: &str, tags: &[(&str, &str)]) -> Result<Instance, RdsError> {
        if let Some(existing) = self.describe(id).await? {
            return Ok(existing);
        }
        let c = &self.cfg;
        let mut req = self
            .client
            .create_db_instance()
            .db_instance_identifier(id)
            .engine("postgres")
            .engine_version(&c.engine_version)
            .db_instance_class(&c.instance_class)
            .allocated_storage(c.allocated_storage)
            .master_username(&c.master_username)
            .master_user_password(self.master_password(id).expose_secret())
            .storage_encrypted(true)
            .deletion_protection(true)
            .publicly_accessible(false)
            .backup_retention_period(c.backup_retention_days)
            .set_kms_key_id(c.kms_key_id.clone())
            .set_db_subnet_group_name(c.db_subnet_group.clone())
            .set_db_parameter_group_name(c.parameter_group.clone());
        if !c.vpc_security_group_ids.is_empty() {
            req = req.set_vpc_security_group_ids(Some(c.vpc_security_group_ids.clone()));
        }
        for (k, v) in tags {
            req = req.tags(Tag::builder().key(*k).value(*v).build());
        }
        match req.send().await {
            Ok(_) => {}
            // A concurrent or earlier attempt made it: that is the one we want.
            Err(e) if e.as_service_error().is_some_and(|s| s.is_db_instance_already_exists_fault()) => {}
            Err(e) => return Err(api(e)),
        }
        self.describe(id).await?.ok_or_else(|| RdsError::Api(format!("instance {id} vanished after creation")))
    }

    /// Waits (with backoff, up to `wait_secs`) for `available`; its endpoint.
    pub async fn wait_available(&self, id: &str) -> Result<InstanceEndpoint, RdsError> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(self.cfg.wait_secs);
        let mut delay = Duration::from_millis(200);
        let mut last = String::from("unknown");
        loop {
            if let Some(i) = self.describe(id).await? {
                match (i.status.as_str(), i.endpoint) {
                    ("available", Some(ep)) => return Ok(ep),
                    (
                        "failed" | "deleting" | "incompatible-parameters" | "incompatible-restore" | "storage-full",
                        _,
                    ) => {
                        return Err(RdsError::Unusable(id.to_string(), i.status));
                    }
                    (status, _) => last = status.to_string(),
                }
            }
            if tokio::time::Instant::now() + delay > deadline {
                return Err(RdsError::Timeout { id: id.into(), wanted: "available", secs: self.cfg.wait_secs, last });
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(30));
        }
    }

    /// Retires an instance: deletion protection off, delete with a final
    /// snapshot of a deterministic name, wait until it is gone. Safe to repeat.
    pub async fn retire(&self, id: &str) -> Result<String, RdsError> {
        self.retire_with(id, true).await.map(|s| s.unwrap_or_default())
    }

    /// Like [`Self::retire`]; without `final_snapshot` nothing of the instance
    /// is kept (an erasure). Returns the snapshot's id when one was taken.
    pub async fn retire_with(&self, id: &str, final_snapshot: bool) -> Result<Option<String>, RdsError> {
        let snapshot = final_snapshot.then(|| final_snapshot_id(id));
        let Some(instance) = self.describe(id).await? else { return Ok(snapshot) };
        if instance.deletion_protection {
            self.client
                .modify_db_instance()
                .db_instance_identifier(id)
                .deletion_protection(false)
                .apply_immediately(true)
                .send()
                .await
                .map_err(api)?;
        }
        if instance.status != "deleting" {
            match self
                .client
                .delete_db_instance()
                .db_instance_identifier(id)
                .skip_final_snapshot(snapshot.is_none())
                .set_final_db_snapshot_identifier(snapshot.clone())
                .send()
                .await
            {
                Ok(_) => {}
                Err(e) if e.as_service_error().is_some_and(|s| s.is_db_instance_not_found_fault()) => {}
                Err(e) => return Err(api(e)),
            }
        }
        let deadline = tokio::time::Instant::now() + Duration::from_secs(self.cfg.wait_secs);
        let mut delay = Duration::from_millis(200);
        while let Some(i) = self.describe(id).await? {
            if tokio::time::Instant::now() + delay > deadline {
                return Err(RdsError::Timeout {
                    id: id.into(),
                    wanted: "deleted",
                    secs: self.cfg.wait_secs,
                    last: i.status,
                });
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(30));
        }
        Ok(snapshot)
    }

    /// Whether a snapshot exists (to check retirements).
    pub async fn snapshot_exists(&self, snapshot: &str) -> Result<bool, RdsError> {
        match self.client.describe_db_snapshots().db_snapshot_identifier(snapshot).send().await {
            Ok(out) => Ok(!out.db_snapshots().is_empty()),
            Err(e) if e.as_service_error().is_some_and(|s| s.is_db_snapshot_not_found_fault()) => Ok(false),
            Err(e) => Err(api(e)),
        }
    }
}
