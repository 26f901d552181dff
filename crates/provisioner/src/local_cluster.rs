//! A private PostgreSQL cluster under a local data folder: the embedded
//! development stack and the test harness both run on one.
//!
//! The server runs as a child of a keeper thread that lives as long as the
//! cluster handle, with a parent-death signal, so a killed parent never leaves a
//! server behind. As root, `initdb` and `postgres` run as the unprivileged
//! `postgres` user through `setpriv` (no `sudo` needed).

use std::ffi::CString;
use std::fs;
use std::os::unix::fs::{PermissionsExt, chown};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::Error;

/// Seconds to wait for a started server to accept connections.
const START_DEADLINE_SECS: u64 = 60;
/// The unprivileged user that owns the cluster when we run as root.
const SERVICE_USER: &str = "postgres";

/// What the cluster looks like; `settings` are passed as `-c name=value`.
#[derive(Debug, Clone)]
pub struct ClusterSpec {
    /// Folder holding `pgdata/` and `postgres.log`.
    pub base_dir: PathBuf,
    /// TCP port on 127.0.0.1 (the server opens no Unix socket).
    pub port: u16,
    /// Superuser name created by initdb.
    pub superuser: String,
    /// Superuser password (scram-sha-256 over TCP).
    pub superuser_password: String,
    /// Extra server settings, e.g. `("fsync", "off")` for throwaway test clusters.
    pub settings: Vec<(String, String)>,
}

impl ClusterSpec {
    /// Settings every Tenantry-managed cluster needs: logical replication for
    /// online moves, enough slots and workers, and a short apply-worker retry
    /// interval (the 5 s default stalls a move after a subscription is dropped).
    pub fn base_settings(max_connections: u32) -> Vec<(String, String)> {
        [
            ("listen_addresses", "127.0.0.1".to_string()),
            ("unix_socket_directories", String::new()),
            ("max_connections", max_connections.to_string()),
            ("wal_level", "logical".into()),
            ("max_replication_slots", "32".into()),
            ("max_wal_senders", "32".into()),
            ("max_worker_processes", "32".into()),
            ("max_logical_replication_workers", "16".into()),
            ("max_sync_workers_per_subscription", "4".into()),
            ("wal_retrieve_retry_interval", "200ms".into()),
            ("shared_buffers", "128MB".into()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }
}

/// A running cluster; stopped (fast shutdown) on `stop` or drop.
pub struct LocalCluster {
    spec: ClusterSpec,
    pid: i32,
    keeper: Option<JoinHandle<()>>,
}

impl LocalCluster {
    /// The folder holding `initdb`, `postgres` and `pg_isready`: PATH first, then
    /// the newest `/usr/lib/postgresql/*/bin`.
    pub fn find_bin_dir() -> Result<PathBuf, Error> {
        let has_all = |dir: &Path| ["initdb", "postgres", "pg_isready"].iter().all(|b| dir.join(b).is_file());
        if let Some(path) = std::env::var_os("PATH") {
            for dir in std::env::split_paths(&path) {
                if has_all(&dir) {
                    return Ok(dir);
                }
            }
        }
        let mut versions: Vec<(u32, PathBuf)> = fs::read_dir("/usr/lib/postgresql")
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| {
                let v = e.file_name().to_str()?.parse::<u32>().ok()?;
                let bin = e.path().join("bin");
                has_all(&bin).then_some((v, bin))
            })
            .collect();
        versions.sort();
        versions.pop().map(|(_, p)| p).ok_or(Error::PostgresNotInstalled)
    }

    /// Initialises the data folder when it is new, then starts the server and
    /// waits until it accepts connections. Running it again reuses the data.
    pub fn start(spec: ClusterSpec) -> Result<Self, Error> {
        let bin = Self::find_bin_dir()?;
        let owner = ServiceUser::resolve()?;
        let pgdata = spec.base_dir.join("pgdata");
        let io_err = |source| Error::DataDir { path: spec.base_dir.clone(), source };
        fs::create_dir_all(&spec.base_dir).map_err(io_err)?;
        owner.check_reachable(&spec.base_dir)?;
        if !pgdata.join("PG_VERSION").exists() {
            Self::initdb(&bin, &spec, &pgdata, &owner)?;
        }
        let tls = Self::certificates(&spec.base_dir, &owner)?;
        let log_path = spec.base_dir.join("postgres.log");
        let log = fs::OpenOptions::new().create(true).append(true).open(&log_path).map_err(io_err)?;
        let mut cmd = owner.command(&bin.join("postgres"));
        // The server's own libpq (a subscription's connection) looks for a
        // client certificate under $HOME/.postgresql: the data folder's, not
        // the (unreadable) home of whoever started it.
        cmd.env("HOME", &spec.base_dir);
        cmd.arg("-D").arg(&pgdata).arg("-p").arg(spec.port.to_string());
        // TLS always: clients of a managed cluster verify it (verify-full).
        cmd.arg("-c").arg("ssl=on");
        cmd.arg("-c").arg(format!("ssl_cert_file={}", tls.join("server.crt").display()));
        cmd.arg("-c").arg(format!("ssl_key_file={}", tls.join("server.key").display()));
        for (k, v) in &spec.settings {
            cmd.arg("-c").arg(format!("{k}={v}"));
        }
        cmd.stdin(Stdio::null()).stdout(log.try_clone()?).stderr(log);

        // The keeper thread owns the child: the parent-death signal fires when the
        // *thread* that spawned the child exits, so that thread must live as long
        // as the cluster does.
        let (tx, rx) = mpsc::channel();
        let keeper = std::thread::Builder::new().name("pg-keeper".into()).spawn(move || match cmd.spawn() {
            Ok(mut child) => {
                let _ = tx.send(Ok(child.id() as i32));
                let _ = child.wait();
            }
            Err(e) => {
                let _ = tx.send(Err(e));
            }
        })?;
        let pid = rx.recv().map_err(|_| Error::Io(std::io::Error::other("keeper thread died")))??;
        let cluster = LocalCluster { spec, pid, keeper: Some(keeper) };
        cluster.wait_ready(&bin, &log_path)?;
        Ok(cluster)
    }

    /// The CA bundle clients of this cluster verify its certificate with.
    pub fn ca_file(&self) -> PathBuf {
        self.spec.base_dir.join("tls").join("ca.crt")
    }

    /// A CA of this data folder's own and a certificate it signs for
    /// 127.0.0.1 (the only address the server listens on), made once with the
    /// `openssl` command and kept under `<base>/tls`.
    fn certificates(base: &Path, owner: &ServiceUser) -> Result<PathBuf, Error> {
        let dir = base.join("tls");
        let io_err = |source| Error::DataDir { path: dir.clone(), source };
        if dir.join("server.crt").exists() && dir.join("server.key").exists() && dir.join("ca.crt").exists() {
            return Ok(dir);
        }
        fs::create_dir_all(&dir).map_err(io_err)?;
        fs::write(
            dir.join("server.ext"),
            "subjectAltName = IP:127.0.0.1\nbasicConstraints = critical, CA:FALSE\n\
             keyUsage = critical, digitalSignature\nextendedKeyUsage = serverAuth\n",
        )
        .map_err(io_err)?;
        let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];
        let steps: [Vec<&str>; 3] = [
            [&["req", "-x509"][..], &ec, &["-keyout", "ca.key", "-out", "ca.crt", "-days", "3650"]].concat(),
            [&["req"][..], &ec, &["-keyout", "server.key", "-out", "server.csr"]].concat(),
            vec![
                "x509",
                "-req",
                "-in",
                "server.csr",
                "-CA",
                "ca.crt",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                "server.crt",
                "-days",
                "3650",
                "-extfile",
                "server.ext",
            ],
        ];
        for (i, args) in steps.iter().enumerate() {
            let subject: &[&str] = match i {
                0 => &["-subj", "/CN=Tenantry local cluster CA"],
                1 => &["-subj", "/CN=127.0.0.1"],
                _ => &[],
            };
            let out = Command::new("openssl").args(args).args(subject).current_dir(&dir).stdin(Stdio::null()).output();
            let out = out.map_err(|e| Error::Command {
                what: "openssl (install it: apt-get install openssl)".into(),
                status: e.to_string(),
                output: String::new(),
            })?;
            if !out.status.success() {
                return Err(Error::Command {
                    what: format!("openssl {}", args[0]),
                    status: out.status.to_string(),
                    output: String::from_utf8_lossy(&[out.stdout, out.stderr].concat()).into_owned(),
                });
            }
        }
        fs::set_permissions(dir.join("server.key"), fs::Permissions::from_mode(0o600)).map_err(io_err)?;
        fs::set_permissions(dir.join("ca.key"), fs::Permissions::from_mode(0o600)).map_err(io_err)?;
        for f in ["server.key", "server.crt"] {
            owner.chown(&dir.join(f)).map_err(io_err)?;
        }
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).map_err(io_err)?;
        Ok(dir)
    }

    fn initdb(bin: &Path, spec: &ClusterSpec, pgdata: &Path, owner: &ServiceUser) -> Result<(), Error> {
        let io_err = |source| Error::DataDir { path: pgdata.to_path_buf(), source };
        fs::create_dir_all(pgdata).map_err(io_err)?;
        fs::set_permissions(pgdata, fs::Permissions::from_mode(0o700)).map_err(io_err)?;
        let pwfile = spec.base_dir.join(".initdb-pw");
        fs::write(&pwfile, &spec.superuser_password).map_err(io_err)?;
        fs::set_permissions(&pwfile, fs::Permissions::from_mode(0o600)).map_err(io_err)?;
        owner.chown(pgdata).map_err(io_err)?;
        owner.chown(&pwfile).map_err(io_err)?;
        let out = owner
            .command(&bin.join("initdb"))
            .arg("-D")
            .arg(pgdata)
            .arg("-U")
            .arg(&spec.superuser)
            .arg(format!("--pwfile={}", pwfile.display()))
            .args(["--auth-host=scram-sha-256", "--auth-local=peer", "-E", "UTF8", "--locale=C", "--no-sync"])
            .stdin(Stdio::null())
            .output();
        let _ = fs::remove_file(&pwfile);
        let out = out?;
        if !out.status.success() {
            let _ = fs::remove_dir_all(pgdata);
            return Err(Error::Command {
                what: "initdb".into(),
                status: out.status.to_string(),
                output: String::from_utf8_lossy(&[out.stdout, out.stderr].concat()).into_owned(),
            });
        }
        Ok(())
    }

    fn wait_ready(&self, bin: &Path, log: &Path) -> Result<(), Error> {
        let deadline = Instant::now() + Duration::from_secs(START_DEADLINE_SECS);
        loop {
            let ok = Command::new(bin.join("pg_isready"))
                .args(["-q", "-h", "127.0.0.1", "-p", &self.spec.port.to_string()])
                .status()
                .map(|s| s.success())
                .unwrap_or(false);
            if ok {
                return Ok(());
            }
            if !self.alive() || Instant::now() > deadline {
                return Err(Error::StartTimeout {
                    port: self.spec.port,
                    secs: START_DEADLINE_SECS,
                    log: log.to_path_buf(),
                });
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn alive(&self) -> bool {
        // SAFETY: signal 0 only checks that the process exists.
        unsafe { libc::kill(self.pid, 0) == 0 }
    }

    pub fn port(&self) -> u16 {
        self.spec.port
    }

    /// Fast shutdown: in-flight transactions roll back, the server exits.
    pub fn stop(&mut self) {
        if let Some(keeper) = self.keeper.take() {
            // SAFETY: sending SIGINT to the server process we started.
            unsafe { libc::kill(self.pid, libc::SIGINT) };
            let _ = keeper.join();
        }
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The OS user the server runs as: ourselves, or `postgres` when we are root.
enum ServiceUser {
    Current,
    Switch { name: String, uid: u32, gid: u32 },
}

impl ServiceUser {
    fn resolve() -> Result<Self, Error> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return Ok(ServiceUser::Current);
        }
        let cname = CString::new(SERVICE_USER).expect("constant has no NUL");
        // SAFETY: getpwnam returns a pointer into static storage or null; we copy
        // the two integers out before any other call.
        let pw = unsafe { libc::getpwnam(cname.as_ptr()) };
        if pw.is_null() {
            return Err(Error::NoServiceUser(SERVICE_USER.into()));
        }
        let (uid, gid) = unsafe { ((*pw).pw_uid, (*pw).pw_gid) };
        Ok(ServiceUser::Switch { name: SERVICE_USER.into(), uid, gid })
    }

    fn command(&self, program: &Path) -> Command {
        match self {
            ServiceUser::Current => {
                let mut cmd = Command::new(program);
                // SAFETY: prctl is async-signal-safe; it only sets our own flag.
                unsafe {
                    cmd.pre_exec(|| {
                        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGINT);
                        Ok(())
                    });
                }
                cmd
            }
            ServiceUser::Switch { name, .. } => {
                let mut cmd = Command::new("setpriv");
                cmd.arg(format!("--reuid={name}"))
                    .arg(format!("--regid={name}"))
                    .arg("--init-groups")
                    .args(["--pdeathsig", "INT", "--"])
                    .arg(program);
                cmd
            }
        }
    }

    /// The service user must be able to walk down to the data folder.
    fn check_reachable(&self, dir: &Path) -> Result<(), Error> {
        use std::os::unix::fs::MetadataExt;
        let ServiceUser::Switch { name, uid, .. } = self else { return Ok(()) };
        let dir = dir.canonicalize()?;
        for ancestor in dir.ancestors().skip(1) {
            let meta = fs::metadata(ancestor)?;
            if meta.uid() != *uid && meta.mode() & 0o001 == 0 {
                return Err(Error::DataDir {
                    path: dir.clone(),
                    source: std::io::Error::other(format!(
                        "running as root, so PostgreSQL runs as `{name}`, who cannot enter {}; \
                         choose a data folder under a world-searchable path (e.g. --data-dir /var/tmp/tenantry)",
                        ancestor.display()
                    )),
                });
            }
        }
        Ok(())
    }

    fn chown(&self, path: &Path) -> std::io::Result<()> {
        match self {
            ServiceUser::Current => Ok(()),
            ServiceUser::Switch { uid, gid, .. } => chown(path, Some(*uid), Some(*gid)),
        }
    }
}
