use std::process::ExitCode;
use std::sync::Arc;

use clap::{CommandFactory, FromArgMatches};
use tokio::net::TcpListener;
use tracing_subscriber::EnvFilter;

use portcullis::app;
use portcullis::clock::SystemClock;
use portcullis::config::{
    Cli, Command, Config, DbArgs, OrgsCommand, ProjectionsCommand, ReceiversCommand,
    SigningKeysCommand, TokensCommand,
};
use portcullis::domain::provenance::{Actor, Origin};
use portcullis::domain::{org, token};
use portcullis::eventstore::{EventStore, Position, StoreOptions};
use portcullis::http::AppState;
use portcullis::runtime::ProgressHub;
use portcullis::runtime::{self, Projection};
use portcullis::{db, error_chain};
use secrecy::ExposeSecret;

type BoxError = Box<dyn std::error::Error>;

fn main() -> ExitCode {
    let matches = Cli::command().get_matches();
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    // The command's name, e.g. `tokens create`, for the events it writes.
    let mut command = String::new();
    let mut sub = matches.subcommand();
    while let Some((name, m)) = sub {
        command = format!("{command} {name}").trim_start().to_string();
        sub = m.subcommand();
    }
    let filter = EnvFilter::try_new(&cli.log).unwrap_or_else(|_| EnvFilter::new("info"));
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    match cli.log_format {
        portcullis::config::LogFormat::Json => logs.json().with_current_span(true).init(),
        portcullis::config::LogFormat::Text => logs.init(),
    }
    let threads = match &cli.command {
        Command::Serve(a) => a.worker_threads.map(usize::from),
        _ => None,
    };
    let outcome = match app::runtime(threads) {
        Ok(rt) => rt.block_on(run_command(cli.command, &command)),
        Err(e) => Err(format!("cannot start the runtime: {e}").into()),
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("portcullis: {}", error_chain(&*e));
            ExitCode::FAILURE
        }
    }
}

async fn run_command(cmd: Command, name: &str) -> Result<(), BoxError> {
    match cmd {
        cmd @ (Command::Serve(_) | Command::Migrate(_)) => run(cmd).await,
        // Whatever a command writes records who ran it and which command it was.
        cmd => {
            let origin = Origin {
                actor: Some(Actor::cli()),
                ..Origin::new(&format!("portcullis {name}"))
            };
            origin.scope(run(cmd)).await
        }
    }
}

async fn run(cmd: Command) -> Result<(), BoxError> {
    match cmd {
        Command::Migrate(a) => migrate(&a.database_url).await,
        Command::Serve(a) => serve(&a).await,
        Command::Projections(p) => projections(p).await,
        Command::Orgs(OrgsCommand::Create { db, name, no_wait }) => {
            let store = store(&db)?;
            let written = org::create(&store, &name).await?;
            if !no_wait {
                wait_applied(&db, &store, "orgs", written.position).await;
            }
            println!("{}", written.id);
            Ok(())
        }
        Command::Orgs(OrgsCommand::Settings {
            db,
            id,
            verify_email_on_change,
        }) => {
            let store = store(&db)?;
            if !org::exists(&store, id).await? {
                return Err(format!("no organization {id}").into());
            }
            if let Some(on) = verify_email_on_change {
                // The service reads settings from the org's events: in force at once.
                org::set_verify_email_on_change(&store, id, on).await?;
            }
            println!(
                "{}",
                serde_json::to_string(&org::settings(&store, id).await?)?
            );
            Ok(())
        }
        Command::Orgs(OrgsCommand::List { db }) => {
            let store = store(&db)?;
            for (id, name) in org::list(&store).await? {
                println!("{id} {name}");
            }
            Ok(())
        }
        Command::Tokens(TokensCommand::Create {
            db,
            org,
            scope,
            name,
            no_wait,
        }) => {
            let store = store(&db)?;
            let issued = token::issue(&store, org, scope, name.as_deref()).await?;
            if !no_wait {
                wait_applied(&db, &store, "api_tokens", issued.written.position).await;
            }
            eprintln!(
                "token {} ({scope}) for organization {org}; shown once, keep it safe",
                issued.written.id
            );
            println!("{}", issued.token.expose_secret());
            Ok(())
        }
        Command::Tokens(TokensCommand::Revoke { db, id }) => {
            let store = store(&db)?;
            let written = token::revoke(&store, id).await?;
            wait_applied(&db, &store, "api_tokens", written.position).await;
            println!("revoked token {id}");
            Ok(())
        }
        Command::Audit(a) => audit(&a).await,
        Command::Receivers(r) => receivers(r).await,
        Command::SigningKeys(k) => signing_keys(k).await,
    }
}

/// `portcullis migrate`: applies what is pending and says what it did.
/// `portcullis audit`: the same entries as the audit API, as text lines or JSON lines.
async fn audit(a: &portcullis::config::AuditArgs) -> Result<(), BoxError> {
    use portcullis::eventstore::audit::{page, AuditQuery};
    if !(1..=100_000).contains(&a.limit) {
        return Err("--limit is 1 to 100000".into());
    }
    let q = AuditQuery {
        org: a.org,
        resource: a.resource,
        event_type: a.event_type.clone(),
        actor: a.actor.clone(),
        since: a.since,
        until: a.until,
        newest_first: !a.oldest_first,
    };
    let pool = pool(&a.db)?;
    let client = pool.get().await?;
    for e in page(&client, &q, None, a.limit).await? {
        if a.json {
            println!("{}", serde_json::to_string(&e)?);
            continue;
        }
        let actor = e.actor.as_ref().map_or("-".to_string(), |v| {
            let kind = v["kind"].as_str().unwrap_or("?");
            match (
                v["name"].as_str(),
                v["token_id"].as_str(),
                v["user"].as_str(),
            ) {
                (Some(n), _, _) => format!("{kind}:{n}"),
                (None, Some(id), _) => format!("{kind}:{id}"),
                (None, None, Some(u)) => format!("{kind}:{u}"),
                _ => kind.to_string(),
            }
        });
        println!(
            "{} {} {} {}/{} v{} by {} request {}",
            e.at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            e.position,
            e.event_type,
            e.resource_type,
            e.resource_id,
            e.version,
            actor,
            e.request_id.as_deref().unwrap_or("-"),
        );
    }
    Ok(())
}

async fn receivers(cmd: ReceiversCommand) -> Result<(), BoxError> {
    use portcullis::secevents::receivers::{self, Registration};
    match cmd {
        ReceiversCommand::Add {
            db,
            org,
            name,
            delivery,
            endpoint,
            events,
            audience,
            authorization,
            group,
            public_url,
        } => {
            if !org::exists(&store(&db)?, org).await? {
                return Err(format!("no organization {org}").into());
            }
            let mut client = pool(&db)?.get().await?;
            let r = Registration {
                name,
                delivery,
                endpoint,
                events,
                audience,
                authorization: authorization.map(Into::into),
                group,
            };
            let made = receivers::register(&mut client, org, &r, &public_url).await?;
            if let Some(t) = &made.poll_token {
                let url = receivers::poll_url(&public_url, org, made.receiver.id);
                eprintln!("poll at {url} with this token (shown once, keep it safe):");
                eprintln!("{}", t.expose_secret());
            }
            println!("{}", serde_json::to_string_pretty(&made.receiver)?);
        }
        ReceiversCommand::List { db, org, json } => {
            let client = pool(&db)?.get().await?;
            let all = receivers::list(&client, Some(org)).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&all)?);
            }
            for r in all.iter().filter(|_| !json) {
                let h = &r.health;
                println!(
                    "{} {} {:?} {} pending={} rejected={} lag={:.1}s failures={}{}",
                    r.id,
                    r.delivery.as_str(),
                    r.name,
                    h.status,
                    h.pending,
                    h.rejected,
                    h.lag_seconds,
                    h.failures,
                    h.last_error
                        .as_ref()
                        .map(|e| format!(" last_error={e:?}"))
                        .unwrap_or_default()
                );
            }
        }
        ReceiversCommand::Remove { db, org, id } => {
            receivers::remove(&pool(&db)?.get().await?, org, id).await?;
        }
        ReceiversCommand::Retry { db, org, id } => {
            let n = receivers::retry(&pool(&db)?.get().await?, org, id).await?;
            eprintln!("{n} refused SETs queued again");
        }
    }
    Ok(())
}

async fn signing_keys(cmd: SigningKeysCommand) -> Result<(), BoxError> {
    use portcullis::secevents::keys;
    match cmd {
        SigningKeysCommand::List { db, org } => {
            for k in keys::list(&pool(&db)?.get().await?, org).await? {
                let state = if k.active { "active" } else { "retired" };
                println!(
                    "{} {} {state} {}",
                    k.kid,
                    k.algorithm,
                    k.created_at.to_rfc3339()
                );
            }
        }
        SigningKeysCommand::Rotate { db, org } => {
            if !org::exists(&store(&db)?, org).await? {
                return Err(format!("no organization {org}").into());
            }
            println!("{}", keys::rotate(&mut pool(&db)?.get().await?, org).await?);
        }
        SigningKeysCommand::Remove { db, org, kid } => {
            keys::remove(&pool(&db)?.get().await?, org, &kid).await?;
        }
    }
    Ok(())
}

async fn migrate(database_url: &str) -> Result<(), BoxError> {
    let applied = db::migrate(database_url).await?;
    if applied.is_empty() {
        println!(
            "database is up to date ({} migrations)",
            db::embedded_migrations().len()
        );
    } else {
        for m in &applied {
            println!("applied {m}");
        }
    }
    Ok(())
}

/// `portcullis serve`: migrates, starts the service and serves until SIGINT/SIGTERM.
/// Migrates, waiting up to a minute for the database to accept connections: nodes and their
/// database often start together (containers, a failover), and a node should not give up
/// on a server that is a few seconds from ready.
async fn migrate_when_reachable(url: &str) -> Result<Vec<String>, BoxError> {
    const WAIT: std::time::Duration = std::time::Duration::from_secs(60);
    let started = std::time::Instant::now();
    let mut backoff = portcullis::backoff::Backoff::new(
        std::time::Duration::from_millis(200),
        std::time::Duration::from_secs(5),
    );
    loop {
        match db::migrate(url).await {
            Err(db::DbError::Connect(e)) if started.elapsed() < WAIT => {
                let delay = backoff.next_delay();
                tracing::warn!(error = %error_chain(&e), retry_in = ?delay, "database not reachable yet");
                // Backoff between connection attempts, bounded by WAIT above.
                tokio::time::sleep(delay).await;
            }
            other => return Ok(other?),
        }
    }
}

async fn serve(a: &portcullis::config::ServeArgs) -> Result<(), BoxError> {
    let applied = migrate_when_reachable(&a.db.database_url).await?;
    for m in &applied {
        tracing::info!(migration = %m, "applied migration");
    }
    let cfg = Config::from(a);
    if cfg.admin_token.is_none() {
        tracing::warn!(
            "PORTCULLIS_ADMIN_TOKEN is not set: the admin endpoints answer 401 to everyone"
        );
    }
    let state = AppState::start(&cfg).await?;
    let listener = TcpListener::bind(a.listen)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", a.listen))?;
    tracing::info!(
        address = %listener.local_addr()?,
        worker_threads = tokio::runtime::Handle::current().metrics().num_workers(),
        "portcullis is serving"
    );
    app::serve(listener, state, shutdown_signal()).await?;
    tracing::info!("stopped");
    Ok(())
}

fn store(db: &DbArgs) -> Result<EventStore, BoxError> {
    Ok(EventStore::new(pool(db)?, StoreOptions::default()))
}

/// The running service applies what the CLI wrote; wait a little for it, so that a token is
/// usable when the command returns. Without a running service, say so.
async fn wait_applied(db: &DbArgs, store: &EventStore, projection: &str, position: Position) {
    let waited = async {
        let hub = ProgressHub::start(&db.database_url, store.pool().clone())
            .await
            .ok()?;
        hub.wait_for_position(projection, position, std::time::Duration::from_secs(5))
            .await
            .ok()
    }
    .await;
    if waited.is_none() {
        eprintln!(
            "note: no running portcullis service has applied this yet ({projection} is behind); \
             it takes effect once one runs"
        );
    }
}

fn find(name: &str) -> Result<Arc<dyn Projection>, BoxError> {
    let all = portcullis::read_models::all();
    let names: Vec<&str> = all.iter().map(|p| p.name()).collect();
    all.iter()
        .find(|p| p.name() == name)
        .cloned()
        .ok_or_else(|| {
            format!(
                "no projection named {name:?}; there are: {}",
                names.join(", ")
            )
            .into()
        })
}

fn pool(db: &DbArgs) -> Result<deadpool_postgres::Pool, BoxError> {
    Ok(db::pool(&db.database_url, 2)?)
}

async fn projections(cmd: ProjectionsCommand) -> Result<(), BoxError> {
    match cmd {
        ProjectionsCommand::Status { db, json } => {
            let pool = pool(&db)?;
            let report = runtime::health(&pool.get().await?).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
                return Ok(());
            }
            println!(
                "{:<20} {:<8} {:>22} {:>10} {:>10} {:>7} {:>6}  updated",
                "projection", "status", "position", "behind", "seconds", "failed", "dead"
            );
            for p in &report.projections {
                println!(
                    "{:<20} {:<8} {:>22} {:>10} {:>10.1} {:>7} {:>6}  {}",
                    p.name,
                    p.status,
                    p.position,
                    p.events_behind,
                    p.seconds_behind,
                    p.failed,
                    p.dead_lettered,
                    p.updated_at.format("%Y-%m-%d %H:%M:%S UTC")
                );
                if let Some(r) = &p.rebuild {
                    println!(
                        "{:<20} rebuilding: {} events to go, about {:.0} s",
                        "",
                        r.events_behind,
                        r.eta_seconds.unwrap_or(f64::NAN)
                    );
                }
            }
            println!(
                "oldest transaction holding the horizon: {:.1} s",
                report.horizon_age_seconds
            );
            Ok(())
        }
        ProjectionsCommand::Rebuild { db, name } => {
            let p = find(&name)?;
            runtime::request_rebuild(&pool(&db)?, p.name()).await?;
            println!(
                "rebuild of {name} requested: the running service builds a new copy and swaps it in \
                 when it has caught up (see `portcullis projections status`)"
            );
            Ok(())
        }
        ProjectionsCommand::Reset { db, name } => {
            let p = find(&name)?;
            runtime::reset(&pool(&db)?, &*p).await?;
            println!(
                "reset {name}: its read model is empty and is being rebuilt by the running service"
            );
            Ok(())
        }
        ProjectionsCommand::RetryFailed { db, name } => {
            let p = find(&name)?;
            let r = runtime::retry_failed(&pool(&db)?, &*p, &SystemClock).await?;
            println!(
                "{name}: {} dead-lettered event(s) applied, {} still failing",
                r.applied, r.still_failing
            );
            Ok(())
        }
        ProjectionsCommand::Acknowledge { db, name } => {
            find(&name)?;
            let n = runtime::acknowledge_failed(&pool(&db)?, &name, &SystemClock).await?;
            println!("{name}: {n} dead-lettered event(s) acknowledged");
            Ok(())
        }
    }
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
    tracing::info!("shutting down");
}
