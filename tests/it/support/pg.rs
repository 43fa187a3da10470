//! Where the test PostgreSQL server comes from, and one database per test.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::OnceCell;
use tokio_postgres::NoTls;

/// A database of one test's own, cloned from the migrated template.
///
/// Not dropped when the test ends: DROP DATABASE waits for every backend of the cluster to
/// absorb a barrier while holding a transaction id, which holds back the event horizon of
/// every other test. Throwaway servers go away whole; on a server of your own, the next run
/// drops the leftovers.
pub struct TestDb {
    pub url: String,
    pub name: String,
}

struct Server {
    /// URL of the server's maintenance database, with a `{db}` placeholder for the name.
    url_template: String,
    template_db: String,
}

static SERVER: OnceCell<Server> = OnceCell::const_new();
static COUNTER: AtomicU64 = AtomicU64::new(0);

impl TestDb {
    /// A fresh database with every migration applied.
    pub async fn new() -> TestDb {
        super::init_tracing();
        let server = server().await;
        Self::create(server, Some(&server.template_db)).await
    }

    /// A fresh database with nothing in it (for migration tests).
    pub async fn empty() -> TestDb {
        let server = server().await;
        Self::create(server, None).await
    }

    async fn create(server: &Server, template: Option<&str>) -> TestDb {
        let name = format!(
            "portcullis_t{}_{}_{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed),
            &uuid::Uuid::new_v4().simple().to_string()[..6]
        );
        let admin_url = server.url_template.replace("{db}", "postgres");
        let client = connect(&admin_url).await;
        let sql = match template {
            Some(t) => format!("CREATE DATABASE \"{name}\" TEMPLATE \"{t}\""),
            None => format!("CREATE DATABASE \"{name}\""),
        };
        client
            .batch_execute(&sql)
            .await
            .expect("create test database");
        TestDb {
            url: server.url_template.replace("{db}", &name),
            name,
        }
    }

    /// A plain client of this database, driven by a spawned task.
    pub async fn client(&self) -> tokio_postgres::Client {
        connect(&self.url).await
    }
}

pub async fn connect(url: &str) -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(url, NoTls)
        .await
        .unwrap_or_else(|e| panic!("connect to test database: {e}"));
    tokio::spawn(async move {
        let _ = conn.await;
    });
    client
}

async fn server() -> &'static Server {
    SERVER
        .get_or_init(|| async {
            let url_template = match std::env::var("DATABASE_URL") {
                Ok(u) if !u.trim().is_empty() => {
                    portcullis::db::url_with_database(u.trim(), "{db}")
                }
                _ => container::start().await,
            };
            let template_db = prepare_template(&url_template).await;
            Server {
                url_template,
                template_db,
            }
        })
        .await
}

/// The template is named after the migrations' content, so a changed migration gets a new
/// one and an unchanged one is reused across runs on the same server.
async fn prepare_template(url_template: &str) -> String {
    let migrations = portcullis::db::embedded_migrations().join(",");
    let mut digest: u64 = 0xcbf29ce484222325;
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/sql");
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .expect("sql/")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    files.sort();
    for f in files {
        for b in std::fs::read(&f)
            .unwrap()
            .iter()
            .chain(migrations.as_bytes())
        {
            digest = (digest ^ *b as u64).wrapping_mul(0x100000001b3);
        }
    }
    let name = format!("portcullis_tpl_{digest:016x}");
    let admin = wait_for_server(&url_template.replace("{db}", "postgres")).await;
    admin
        .execute(
            "SELECT pg_advisory_lock(hashtextextended('portcullis.test.template', 0))",
            &[],
        )
        .await
        .unwrap();
    let exists = admin
        .query_opt("SELECT 1 FROM pg_database WHERE datname = $1", &[&name])
        .await
        .unwrap()
        .is_some();
    if !exists {
        let building = format!("{name}_building");
        admin
            .batch_execute(&format!("DROP DATABASE IF EXISTS \"{building}\""))
            .await
            .unwrap();
        admin
            .batch_execute(&format!("CREATE DATABASE \"{building}\""))
            .await
            .unwrap();
        portcullis::db::migrate(&url_template.replace("{db}", &building))
            .await
            .expect("migrate the template database");
        admin
            .batch_execute(&format!(
                "ALTER DATABASE \"{building}\" RENAME TO \"{name}\"; \
                 ALTER DATABASE \"{name}\" WITH IS_TEMPLATE true"
            ))
            .await
            .unwrap();
    }
    // Leftovers of earlier runs that stopped before their Drop ran.
    let stale = admin
        .query(
            "SELECT datname FROM pg_database d WHERE datname LIKE 'portcullis\\_t%\\_%' \
             AND NOT EXISTS (SELECT 1 FROM pg_stat_activity a WHERE a.datid = d.oid) \
             AND datname NOT LIKE $1",
            &[&format!("portcullis\\_t{}\\_%", std::process::id())],
        )
        .await
        .unwrap();
    for r in stale {
        let n: String = r.get(0);
        if n.starts_with("portcullis_tpl_") {
            continue;
        }
        let _ = admin
            .batch_execute(&format!("DROP DATABASE IF EXISTS \"{n}\""))
            .await;
    }
    admin
        .execute(
            "SELECT pg_advisory_unlock(hashtextextended('portcullis.test.template', 0))",
            &[],
        )
        .await
        .unwrap();
    name
}

/// A freshly started server may refuse connections for a moment: retry until a deadline.
async fn wait_for_server(url: &str) -> tokio_postgres::Client {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let mut backoff = Duration::from_millis(20);
    loop {
        match tokio_postgres::connect(url, NoTls).await {
            Ok((c, conn)) => {
                tokio::spawn(async move {
                    let _ = conn.await;
                });
                if c.simple_query("SELECT 1").await.is_ok() {
                    return c;
                }
            }
            Err(e) if tokio::time::Instant::now() >= deadline => {
                panic!("the test PostgreSQL server at {url} did not answer within 60 s: {e}")
            }
            Err(_) => {}
        }
        // Backoff between connection attempts, bounded by the deadline.
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_millis(500));
    }
}

mod container {
    use testcontainers::core::{IntoContainerPort, WaitFor};
    use testcontainers::runners::AsyncRunner;
    use testcontainers::{GenericImage, ImageExt};

    /// Starts PostgreSQL in Docker and returns a URL template. The container outlives this
    /// test process by moments only: a detached watcher removes it when the process exits.
    pub async fn start() -> String {
        let image =
            std::env::var("PORTCULLIS_TEST_PG_IMAGE").unwrap_or_else(|_| "postgres:15".into());
        let (name, tag) = image.rsplit_once(':').unwrap_or((&image, "latest"));
        let run = std::env::var("PORTCULLIS_TEST_RUN").unwrap_or_else(|_| "adhoc".into());
        let container = GenericImage::new(name, tag)
            .with_exposed_port(5432.tcp())
            .with_wait_for(WaitFor::message_on_stderr(
                "database system is ready to accept connections",
            ))
            .with_env_var("POSTGRES_PASSWORD", "postgres")
            .with_label("portcullis.test", "1")
            .with_label("portcullis.test-run", run)
            .with_cmd([
                "postgres",
                "-c",
                "fsync=off",
                "-c",
                "synchronous_commit=off",
                "-c",
                "full_page_writes=off",
                "-c",
                "max_connections=400",
            ])
            .start()
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "no DATABASE_URL and no PostgreSQL container ({image}): {e}. \
                     Run `make test`, or set DATABASE_URL to a server the tests may create databases on."
                )
            });
        let host = container.get_host().await.expect("container host");
        let port = container
            .get_host_port_ipv4(5432.tcp())
            .await
            .expect("container port");
        let id = container.id().to_string();
        // Removes the container once this process is gone, however it ends.
        let _ = std::process::Command::new("setsid")
            .arg("sh")
            .arg("-c")
            .arg(format!(
                "tail --pid={} -f /dev/null; docker rm -f -v {} >/dev/null 2>&1",
                std::process::id(),
                id
            ))
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn();
        std::mem::forget(container);
        format!("postgres://postgres:postgres@{host}:{port}/{{db}}")
    }
}

/// A PostgreSQL server of this test's own (scripts/pg-local.sh), so restarting it disturbs
/// no other test. Destroyed on drop.
pub struct OwnServer {
    pub dir: std::path::PathBuf,
    pub port: u16,
}

impl OwnServer {
    pub fn script(&self, cmd: &str) -> String {
        let out =
            std::process::Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/pg-local.sh"))
                .arg(cmd)
                .env("PORTCULLIS_PG_DIR", &self.dir)
                .env("PORTCULLIS_PG_PORT", self.port.to_string())
                .env("PORTCULLIS_PG_DB", "postgres")
                .env("PORTCULLIS_PG_FAST", "1")
                .output()
                .expect("run scripts/pg-local.sh");
        assert!(
            out.status.success(),
            "pg-local.sh {cmd}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    pub fn start() -> (OwnServer, String) {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let server = OwnServer {
            dir: std::env::temp_dir().join(format!("portcullis-own-{}-{port}", std::process::id())),
            port,
        };
        let url = server.script("start");
        (server, url)
    }
}

impl Drop for OwnServer {
    fn drop(&mut self) {
        let _ =
            std::process::Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/pg-local.sh"))
                .arg("destroy")
                .env("PORTCULLIS_PG_DIR", &self.dir)
                .env("PORTCULLIS_PG_PORT", self.port.to_string())
                .output();
    }
}
