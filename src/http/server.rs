//! The HTTP server loop, with every client-held resource bounded: connections (at most
//! `max_connections` at once; past it new ones wait in the kernel's backlog), the time a
//! client may take to send its headers (slowloris), and the time shutdown waits for
//! in-flight requests before it gives up on them. Each request gets the client's address
//! as axum's `ConnectInfo`.

use std::future::Future;
use std::sync::Arc;

use axum::extract::ConnectInfo;
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tower::Service;

use crate::config::HttpOptions;

/// The pause after a failed accept before the next try.
const ACCEPT_RETRY: std::time::Duration = std::time::Duration::from_millis(100);

/// Serves `app` on `listener` until `shutdown` resolves; then stops accepting, lets
/// in-flight requests finish for up to `opts.shutdown_grace`, and returns.
pub async fn run(
    listener: TcpListener,
    app: Router,
    opts: &HttpOptions,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let permits = Arc::new(Semaphore::new(opts.max_connections.max(1)));
    let graceful = GracefulShutdown::new();
    let mut connections = tokio::task::JoinSet::new();
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(opts.header_read_timeout)
        .keep_alive(true);
    tokio::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            _ = &mut shutdown => break,
            p = permits.clone().acquire_owned() => p.expect("the semaphore is never closed"),
        };
        let (stream, peer) = tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: the next accept may succeed once
                    // connections close. A pause between tries keeps this from spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(ACCEPT_RETRY).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let app = app.clone();
        let service = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
            req.extensions_mut().insert(ConnectInfo(peer));
            let mut app = app.clone();
            async move { app.call(req.map(axum::body::Body::new)).await }
        });
        let conn = http.serve_connection(TokioIo::new(stream), service);
        let conn = graceful.watch(conn);
        // Finished connections leave the set here, so it holds only the open ones.
        while connections.try_join_next().is_some() {}
        connections.spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, %peer, "connection ended with an error");
            }
            drop(permit);
        });
    }
    drop(listener);
    if tokio::time::timeout(opts.shutdown_grace, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(
            grace = ?opts.shutdown_grace,
            open = connections.len(),
            "shutdown: requests still in flight after the grace period are dropped"
        );
    }
    // Dropping a connection's task closes it and cancels its request (its transaction rolls
    // back with its pooled connection).
    connections.abort_all();
    while connections.join_next().await.is_some() {}
    Ok(())
}
