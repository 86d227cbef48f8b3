//! A private PostgreSQL cluster started from the machine's own PostgreSQL binaries.
//!
//! `avatars dev` keeps one in a project-local directory that survives restarts; `cargo xtask
//! test` makes a throwaway one for a test run. The cluster listens on 127.0.0.1 only (no Unix
//! socket), trusts local connections for its single superuser, and is stopped when the
//! [`Cluster`] is dropped.
//!
//! PostgreSQL refuses to run as root, so when this process is root the binaries run as the
//! `postgres` system user (or `nobody`), and the data directory is handed to that user.

use std::fs;
use std::io::Write;
use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

/// The superuser every private cluster is initialised with.
pub const SUPERUSER: &str = "avatars";

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error(
        "PostgreSQL server binaries (initdb, pg_ctl, postgres) were not found on PATH, via \
         `pg_config --bindir`, or under /usr/lib/postgresql/*/bin: install them (Debian and \
         Ubuntu: `sudo apt-get install postgresql`; Fedora: `sudo dnf install \
         postgresql-server`; macOS: `brew install postgresql`) or set DATABASE_URL to an \
         existing server"
    )]
    BinariesNotFound,
    #[error("running as root, but neither the `postgres` nor the `nobody` user exists to run PostgreSQL as")]
    NoUnprivilegedUser,
    #[error("{action} failed: {detail}")]
    Command { action: String, detail: String },
    #[error("{action}: {source}")]
    Io {
        action: String,
        #[source]
        source: std::io::Error,
    },
}

fn io_err(action: impl Into<String>) -> impl FnOnce(std::io::Error) -> ClusterError {
    let action = action.into();
    move |source| ClusterError::Io { action, source }
}

/// How a cluster is tuned. Test clusters trade durability for speed.
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    /// Skip fsync: fine for throwaway test clusters, not for dev data.
    pub durable: bool,
    pub max_connections: u32,
    /// More `postgresql.conf` lines, written when the cluster is initialised (for example
    /// `shared_preload_libraries = 'pg_stat_statements'` for a benchmark).
    pub extra_settings: Vec<String>,
}

impl ClusterOptions {
    pub fn dev() -> Self {
        Self {
            durable: true,
            max_connections: 100,
            extra_settings: Vec::new(),
        }
    }

    pub fn test() -> Self {
        Self {
            durable: false,
            max_connections: 300,
            extra_settings: Vec::new(),
        }
    }
}

/// The account the server processes run under.
#[derive(Debug, Clone, Copy)]
struct RunAs {
    uid: u32,
    gid: u32,
}

/// A running private cluster. Dropping it stops the server.
#[derive(Debug)]
pub struct Cluster {
    bindir: PathBuf,
    data_dir: PathBuf,
    port: u16,
    run_as: Option<RunAs>,
    running: bool,
}

impl Cluster {
    /// Starts the cluster in `data_dir`, initialising it first when the directory holds none.
    /// A server left running on the same directory by a crashed earlier run is stopped first.
    pub fn start(data_dir: &Path, options: &ClusterOptions) -> Result<Self, ClusterError> {
        let bindir = find_or_install_bindir()?;
        let run_as = unprivileged_user()?;
        fs::create_dir_all(data_dir).map_err(io_err(format!("creating {}", data_dir.display())))?;
        let data_dir = data_dir
            .canonicalize()
            .map_err(io_err(format!("resolving {}", data_dir.display())))?;
        if let Some(user) = run_as {
            std::os::unix::fs::chown(&data_dir, Some(user.uid), Some(user.gid)).map_err(io_err(
                format!("handing {} to the PostgreSQL user", data_dir.display()),
            ))?;
        }
        let mut cluster = Cluster {
            bindir,
            data_dir,
            port: 0,
            run_as,
            running: false,
        };
        if !cluster.data_dir.join("PG_VERSION").exists() {
            cluster.initdb(options)?;
        }
        if cluster.data_dir.join("postmaster.pid").exists() && cluster.status_running() {
            cluster.pg_ctl_stop()?;
        }
        cluster.port = free_port()?;
        cluster.pg_ctl_start()?;
        cluster.running = true;
        Ok(cluster)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// A connection URL for `database` as the cluster's superuser.
    pub fn url(&self, database: &str) -> String {
        format!("postgres://{SUPERUSER}@127.0.0.1:{}/{database}", self.port)
    }

    /// Creates `database` unless it already exists.
    pub fn ensure_database(&self, database: &str) -> Result<(), ClusterError> {
        let output = self
            .command("createdb")
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-U",
                SUPERUSER,
                database,
            ])
            .output()
            .map_err(io_err("running createdb"))?;
        if output.status.success()
            || String::from_utf8_lossy(&output.stderr).contains("already exists")
        {
            Ok(())
        } else {
            Err(command_failed("createdb", &output))
        }
    }

    /// Stops the server (fast shutdown: sessions are disconnected, data is kept).
    pub fn stop(&mut self) -> Result<(), ClusterError> {
        if self.running {
            self.running = false;
            self.pg_ctl_stop()?;
        }
        Ok(())
    }

    fn initdb(&self, options: &ClusterOptions) -> Result<(), ClusterError> {
        let output = self
            .command("initdb")
            .arg("-D")
            .arg(&self.data_dir)
            .args([
                "-U",
                SUPERUSER,
                "--auth=trust",
                "--encoding=UTF8",
                "--locale=C",
            ])
            .output()
            .map_err(io_err("running initdb"))?;
        if !output.status.success() {
            return Err(command_failed("initdb", &output));
        }
        // Settings live in the cluster's own config so that every later start uses them.
        let mut settings = String::from(
            "\n# private avatars cluster\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = ''\n",
        );
        settings.push_str(&format!("max_connections = {}\n", options.max_connections));
        if !options.durable {
            settings.push_str("fsync = off\nsynchronous_commit = off\nfull_page_writes = off\n");
        }
        for line in &options.extra_settings {
            settings.push_str(line);
            settings.push('\n');
        }
        let conf = self.data_dir.join("postgresql.conf");
        fs::OpenOptions::new()
            .append(true)
            .open(&conf)
            .and_then(|mut file| file.write_all(settings.as_bytes()))
            .map_err(io_err(format!("writing {}", conf.display())))
    }

    fn pg_ctl_start(&self) -> Result<(), ClusterError> {
        let log = self.data_dir.join("server.log");
        let output = self
            .command("pg_ctl")
            .arg("-D")
            .arg(&self.data_dir)
            .arg("-l")
            .arg(&log)
            .args(["-w", "-t", "60", "-o"])
            .arg(format!("-p {}", self.port))
            .arg("start")
            .stdin(Stdio::null())
            .output()
            .map_err(io_err("running pg_ctl start"))?;
        if output.status.success() {
            Ok(())
        } else {
            let tail = fs::read_to_string(&log).unwrap_or_default();
            let tail: Vec<&str> = tail.lines().rev().take(5).collect();
            Err(ClusterError::Command {
                action: "pg_ctl start".into(),
                detail: format!(
                    "{}; server log: {}",
                    String::from_utf8_lossy(&output.stderr).trim(),
                    tail.into_iter().rev().collect::<Vec<_>>().join(" | ")
                ),
            })
        }
    }

    fn pg_ctl_stop(&self) -> Result<(), ClusterError> {
        let output = self
            .command("pg_ctl")
            .arg("-D")
            .arg(&self.data_dir)
            .args(["-w", "-t", "60", "-m", "fast", "stop"])
            .output()
            .map_err(io_err("running pg_ctl stop"))?;
        if output.status.success() {
            Ok(())
        } else {
            Err(command_failed("pg_ctl stop", &output))
        }
    }

    fn status_running(&self) -> bool {
        self.command("pg_ctl")
            .arg("-D")
            .arg(&self.data_dir)
            .arg("status")
            .output()
            .map(|output| output.status.success())
            .unwrap_or(false)
    }

    fn command(&self, program: &str) -> Command {
        let mut command = Command::new(self.bindir.join(program));
        command.stdin(Stdio::null());
        if let Some(user) = self.run_as {
            command.uid(user.uid).gid(user.gid);
        }
        command
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if let Err(error) = self.stop() {
            eprintln!("stopping the private PostgreSQL cluster: {error}");
        }
    }
}

fn command_failed(action: &str, output: &Output) -> ClusterError {
    ClusterError::Command {
        action: action.to_string(),
        detail: String::from_utf8_lossy(&output.stderr).trim().to_string(),
    }
}

fn free_port() -> Result<u16, ClusterError> {
    let listener = TcpListener::bind("127.0.0.1:0").map_err(io_err("finding a free port"))?;
    listener
        .local_addr()
        .map(|addr| addr.port())
        .map_err(io_err("finding a free port"))
}

fn unprivileged_user() -> Result<Option<RunAs>, ClusterError> {
    if !nix::unistd::geteuid().is_root() {
        return Ok(None);
    }
    ["postgres", "nobody"]
        .into_iter()
        .find_map(|name| nix::unistd::User::from_name(name).ok().flatten())
        .map(|user| {
            Some(RunAs {
                uid: user.uid.as_raw(),
                gid: user.gid.as_raw(),
            })
        })
        .ok_or(ClusterError::NoUnprivilegedUser)
}

/// The Debian package with the server binaries.
const DEBIAN_PACKAGE: &str = "postgresql";

/// Finds the server binaries, installing the distribution's package first when they are
/// missing and this process may (root, with apt-get). Otherwise the error says in one line what
/// to install. `avatars dev` and `cargo xtask test` call this before starting a cluster.
pub fn find_or_install_bindir() -> Result<PathBuf, ClusterError> {
    let root = nix::unistd::geteuid().is_root();
    let apt = root
        && Command::new("apt-get")
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
    ensure_bindir(find_bindir, apt, install_debian_package)
}

/// [`find_or_install_bindir`] with its parts given: how to look, whether installing is
/// possible, and how to install.
fn ensure_bindir(
    find: impl Fn() -> Result<PathBuf, ClusterError>,
    can_install: bool,
    install: impl FnOnce() -> Result<(), ClusterError>,
) -> Result<PathBuf, ClusterError> {
    match find() {
        Ok(dir) => Ok(dir),
        Err(ClusterError::BinariesNotFound) if can_install => {
            install()?;
            find()
        }
        Err(error) => Err(error),
    }
}

/// `apt-get install postgresql`, refreshing the package lists once if the first try fails.
fn install_debian_package() -> Result<(), ClusterError> {
    eprintln!(
        "PostgreSQL server binaries not found: installing the Debian package {DEBIAN_PACKAGE}"
    );
    let apt = |args: &[&str]| {
        Command::new("apt-get")
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    let install = ["install", "-y", "-q", DEBIAN_PACKAGE];
    if apt(&install) || (apt(&["update", "-q"]) && apt(&install)) {
        Ok(())
    } else {
        Err(ClusterError::Command {
            action: format!("apt-get install {DEBIAN_PACKAGE}"),
            detail: "the package could not be installed; install it by hand or set DATABASE_URL"
                .into(),
        })
    }
}

/// Finds the directory holding `initdb`, `pg_ctl` and `postgres`.
pub fn find_bindir() -> Result<PathBuf, ClusterError> {
    let has_server = |dir: &Path| {
        ["initdb", "pg_ctl", "postgres", "createdb"]
            .iter()
            .all(|b| dir.join(b).is_file())
    };

    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            // Debian links initdb/pg_ctl into /usr/local/bin or /usr/bin without the rest:
            // follow the link to the real bindir.
            let initdb = dir.join("initdb");
            if let Ok(real) = initdb.canonicalize() {
                if let Some(real_dir) = real.parent() {
                    if has_server(real_dir) {
                        return Ok(real_dir.to_path_buf());
                    }
                }
            }
        }
    }
    if let Ok(output) = Command::new("pg_config").arg("--bindir").output() {
        if output.status.success() {
            let dir = PathBuf::from(String::from_utf8_lossy(&output.stdout).trim());
            if has_server(&dir) {
                return Ok(dir);
            }
        }
    }
    let mut versions: Vec<(u32, PathBuf)> = fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let version = entry.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = entry.path().join("bin");
            has_server(&bin).then_some((version, bin))
        })
        .collect();
    versions.sort();
    versions
        .pop()
        .map(|(_, dir)| dir)
        .ok_or(ClusterError::BinariesNotFound)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    #[test]
    fn present_binaries_are_used_without_installing() {
        let installed = Cell::new(false);
        let dir = ensure_bindir(
            || Ok(PathBuf::from("/opt/pg/bin")),
            true,
            || {
                installed.set(true);
                Ok(())
            },
        )
        .unwrap();
        assert_eq!(dir, PathBuf::from("/opt/pg/bin"));
        assert!(!installed.get());
    }

    #[test]
    fn missing_binaries_are_installed_when_possible_and_then_found() {
        let installed = Cell::new(false);
        let dir = ensure_bindir(
            || {
                if installed.get() {
                    Ok(PathBuf::from("/usr/lib/postgresql/17/bin"))
                } else {
                    Err(ClusterError::BinariesNotFound)
                }
            },
            true,
            || {
                installed.set(true);
                Ok(())
            },
        )
        .unwrap();
        assert_eq!(dir, PathBuf::from("/usr/lib/postgresql/17/bin"));
    }

    #[test]
    fn without_root_one_line_says_what_to_install() {
        let error = ensure_bindir(
            || Err(ClusterError::BinariesNotFound),
            false,
            || panic!("no install without root"),
        )
        .unwrap_err();
        let message = error.to_string();
        assert_eq!(message.lines().count(), 1, "{message}");
        assert!(message.contains("apt-get install postgresql"), "{message}");
        assert!(message.contains("DATABASE_URL"), "{message}");
    }

    #[test]
    fn a_failed_install_is_reported() {
        let error = ensure_bindir(
            || Err(ClusterError::BinariesNotFound),
            true,
            || {
                Err(ClusterError::Command {
                    action: "apt-get install postgresql".into(),
                    detail: "no network".into(),
                })
            },
        )
        .unwrap_err();
        assert!(error
            .to_string()
            .starts_with("apt-get install postgresql failed"));
    }

    #[test]
    fn a_cluster_starts_serves_and_stops() {
        let dir = std::env::temp_dir().join(format!("pgcluster-test-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let mut cluster = Cluster::start(&dir, &ClusterOptions::test()).expect("cluster starts");
        cluster.ensure_database("probe").expect("database created");
        cluster
            .ensure_database("probe")
            .expect("creating it again is a no-op");
        let port = cluster.port();
        assert!(
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok(),
            "server accepts connections"
        );
        cluster.stop().expect("cluster stops");
        assert!(
            std::net::TcpStream::connect(("127.0.0.1", port)).is_err(),
            "server is gone after stop"
        );
        fs::remove_dir_all(&dir).expect("data dir removed");
    }
}
