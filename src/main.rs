use std::process::ExitCode;

use clap::Parser;
use tokio::net::TcpListener;
use tracing_subscriber::EnvFilter;

use portcullis::app::{self, AppState};
use portcullis::config::{Cli, Command, Config};
use portcullis::db;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_new(&cli.log).unwrap_or_else(|_| EnvFilter::new("info")))
        .with_writer(std::io::stderr)
        .init();
    match run(cli.command).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // The whole cause chain, so the log says why and not only what.
            let mut msg = e.to_string();
            let mut src = e.source();
            while let Some(s) = src {
                let s_msg = s.to_string();
                if !msg.contains(&s_msg) {
                    msg.push_str(": ");
                    msg.push_str(&s_msg);
                }
                src = s.source();
            }
            eprintln!("portcullis: {msg}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cmd: Command) -> Result<(), Box<dyn std::error::Error>> {
    match cmd {
        Command::Migrate(a) => {
            let applied = db::migrate(&a.database_url).await?;
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
        Command::Serve(a) => {
            let applied = db::migrate(&a.db.database_url).await?;
            for m in &applied {
                tracing::info!(migration = %m, "applied migration");
            }
            let state = AppState::new(&Config::from(&a))?;
            let listener = TcpListener::bind(a.listen)
                .await
                .map_err(|e| format!("cannot listen on {}: {e}", a.listen))?;
            tracing::info!(address = %listener.local_addr()?, "portcullis is serving");
            app::serve(listener, state, shutdown_signal()).await?;
            tracing::info!("stopped");
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
