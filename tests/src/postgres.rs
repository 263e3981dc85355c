//! PostgreSQL fixtures: the suite's database server from `DATABASE_URL`, a fresh database per
//! test, and throwaway clusters that a test may stop and start (outage tests).

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, bail};
use rand::RngCore;
use sqlx::Connection;

/// The superuser URL of the suite's PostgreSQL server. Fails loudly when it is missing: these
/// tests must run against a real server and never pass by skipping.
pub fn database_url() -> String {
    std::env::var("DATABASE_URL").unwrap_or_else(|_| {
        panic!(
            "DATABASE_URL is not set: these tests need a real PostgreSQL. \
             Run `set -a; eval \"$(deploy/dev/postgres.sh)\"; set +a` first"
        )
    })
}

/// The directory of initdb and pg_ctl, from `FLEETLET_PG_BINDIR` (set by deploy/dev/postgres.sh).
pub fn pg_bindir() -> PathBuf {
    std::env::var_os("FLEETLET_PG_BINDIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            panic!(
                "FLEETLET_PG_BINDIR is not set: it must name the directory of initdb and pg_ctl. \
                 deploy/dev/postgres.sh prints it"
            )
        })
}

fn random_hex(bytes: usize) -> String {
    let mut buffer = vec![0u8; bytes];
    rand::rng().fill_bytes(&mut buffer);
    buffer.iter().map(|b| format!("{b:02x}")).collect()
}

/// `url` with its database name replaced.
pub fn with_database(url: &str, database: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((base, query)) => (base, Some(query)),
        None => (url, None),
    };
    // The database is the last path segment after the authority.
    let authority_start = base.find("://").map_or(0, |i| i + 3);
    let path_start = base[authority_start..]
        .find('/')
        .map_or(base.len(), |i| authority_start + i);
    let mut replaced = format!("{}/{database}", &base[..path_start]);
    if let Some(query) = query {
        replaced.push('?');
        replaced.push_str(query);
    }
    replaced
}

/// A database created for one test and dropped when the value is dropped.
#[derive(Debug)]
pub struct FreshDatabase {
    pub url: String,
    pub name: String,
    server_url: String,
}

impl FreshDatabase {
    /// Creates an empty database on the server of `server_url` (a superuser URL).
    pub async fn create(server_url: &str) -> anyhow::Result<Self> {
        let name = format!("fleetlet_e2e_{}", random_hex(6));
        let admin_url = with_database(server_url, "postgres");
        let mut connection = sqlx::PgConnection::connect(&admin_url)
            .await
            .context("connecting to the test server's postgres database")?;
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&mut connection)
            .await
            .with_context(|| format!("creating database {name}"))?;
        connection.close().await.ok();
        Ok(Self {
            url: with_database(server_url, &name),
            name,
            server_url: admin_url,
        })
    }
}

impl Drop for FreshDatabase {
    fn drop(&mut self) {
        // Drop cannot await, and may run inside a runtime; a thread with its own runtime can.
        let admin_url = self.server_url.clone();
        let name = self.name.clone();
        let dropped = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .ok()?;
            runtime.block_on(async {
                let mut connection = sqlx::PgConnection::connect(&admin_url).await.ok()?;
                sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                    .execute(&mut connection)
                    .await
                    .ok()
            })
        });
        let _ = dropped.join();
    }
}

/// Creates a fresh database on the suite's server and returns it (dropped with the value).
pub async fn fresh_database() -> anyhow::Result<FreshDatabase> {
    FreshDatabase::create(&database_url()).await
}

/// A free TCP port on 127.0.0.1 (the OS picks it; the tiny window before reuse is acceptable).
pub fn free_port() -> anyhow::Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0").context("binding port 0")?;
    Ok(listener.local_addr()?.port())
}

/// A private PostgreSQL cluster that a test can stop and start, with password authentication
/// over TCP. Stopped and deleted on drop.
#[derive(Debug)]
pub struct PgCluster {
    dir: tempfile::TempDir,
    bindir: PathBuf,
    pub port: u16,
    pub password: String,
    /// The superuser URL (user `fleetlet`, database `postgres`).
    pub url: String,
}

/// Runs a command as the postgres OS user: PostgreSQL refuses to run as root.
pub fn as_postgres(program: &Path) -> Command {
    let mut command = Command::new("runuser");
    command
        .args(["-u", "postgres", "--"])
        .arg(program)
        .current_dir("/")
        .stdin(Stdio::null());
    command
}

/// Runs `command` to its end; an error with its output unless it succeeded.
pub fn run(command: &mut Command, what: &str) -> anyhow::Result<()> {
    let output = command
        .output()
        .with_context(|| format!("running {what}"))?;
    if !output.status.success() {
        bail!(
            "{what} failed ({}): {}{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(())
}

impl PgCluster {
    /// Creates and starts a cluster on a free port.
    pub fn start() -> anyhow::Result<Self> {
        let bindir = pg_bindir();
        let dir = tempfile::Builder::new()
            .prefix("fleetlet-pg-")
            .tempdir()
            .context("creating the cluster directory")?;
        run(
            Command::new("chown")
                .arg("postgres:postgres")
                .arg(dir.path()),
            "chown of the cluster directory",
        )?;
        let password = random_hex(12);
        let password_file = dir.path().join("password");
        std::fs::write(&password_file, &password)?;
        run(
            Command::new("chown")
                .arg("postgres:postgres")
                .arg(&password_file),
            "chown of the password file",
        )?;
        run(
            as_postgres(&bindir.join("initdb"))
                .arg("-D")
                .arg(dir.path().join("data"))
                .args([
                    "--username=fleetlet",
                    "--auth-host=scram-sha-256",
                    "--auth-local=trust",
                ])
                .arg(format!("--pwfile={}", password_file.display()))
                .args(["--no-sync", "--encoding=UTF8", "--no-locale"]),
            "initdb",
        )?;
        let port = free_port()?;
        let cluster = Self {
            url: format!("postgres://fleetlet:{password}@127.0.0.1:{port}/postgres"),
            dir,
            bindir,
            port,
            password,
        };
        cluster.start_again()?;
        Ok(cluster)
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// Starts the (stopped) server again on the same port, waiting until it accepts connections.
    pub fn start_again(&self) -> anyhow::Result<()> {
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off",
            self.port,
            self.dir.path().display()
        );
        run(
            as_postgres(&self.bindir.join("pg_ctl"))
                .arg("-D")
                .arg(self.data_dir())
                .arg("-l")
                .arg(self.dir.path().join("postgres.log"))
                .args(["-o", &options, "-w", "-t", "30", "start"]),
            "pg_ctl start",
        )
    }

    /// Stops the server at once, cutting every connection (like a crash or a failover).
    pub fn stop(&self) -> anyhow::Result<()> {
        run(
            as_postgres(&self.bindir.join("pg_ctl"))
                .arg("-D")
                .arg(self.data_dir())
                .args(["-m", "immediate", "-w", "-t", "30", "stop"]),
            "pg_ctl stop",
        )
    }

    /// The URL of database `name` on this cluster.
    pub fn database_url(&self, name: &str) -> String {
        with_database(&self.url, name)
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        let _ = self.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_database_name_is_replaced() {
        assert_eq!(
            with_database("postgres://u:p@h:5432/fleetlet", "other"),
            "postgres://u:p@h:5432/other"
        );
        assert_eq!(
            with_database("postgres://u:p@h:5432/fleetlet?sslmode=disable", "x"),
            "postgres://u:p@h:5432/x?sslmode=disable"
        );
        assert_eq!(with_database("postgres://u:p@h", "x"), "postgres://u:p@h/x");
    }
}
