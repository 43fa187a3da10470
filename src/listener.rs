//! A dedicated LISTEN connection with reconnect: tokio-postgres only delivers notifications
//! on a connection driven by hand, and a pooled client cannot LISTEN (docs/ARCHITECTURE.md §4).
//! Notifications are lost while it reconnects, so every (re)connect is announced and the
//! consumer catches up by reading the database.

use std::time::Duration;

use futures::StreamExt;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_postgres::AsyncMessage;

use crate::backoff::Backoff;

/// Why a LISTEN connection ended.
#[derive(Debug, thiserror::Error)]
enum Lost {
    #[error("connection error")]
    Error(#[source] tokio_postgres::Error),
    #[error("the server closed the connection")]
    Closed,
    #[error("the connection task ended")]
    TaskEnded,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListenEvent {
    /// LISTEN is in place (first connect or reconnect): anything may have been missed.
    Connected,
    Notification {
        channel: String,
        payload: String,
    },
}

/// Starts the listener task; it ends when the receiver is dropped.
pub fn spawn(
    url: String,
    channels: Vec<String>,
    purpose: &'static str,
) -> (mpsc::Receiver<ListenEvent>, JoinHandle<()>) {
    spawn_then(url, channels, purpose, Vec::new())
}

/// [`spawn`], and on every (re)connect runs `then` on the LISTEN connection once LISTEN is
/// in place, each statement in a transaction of its own, before `Connected` is announced.
pub fn spawn_then(
    url: String,
    channels: Vec<String>,
    purpose: &'static str,
    then: Vec<String>,
) -> (mpsc::Receiver<ListenEvent>, JoinHandle<()>) {
    let (tx, rx) = mpsc::channel(1024);
    let task = tokio::spawn(run(url, channels, then, purpose, tx));
    (rx, task)
}

/// LISTEN on every channel, then each of `then` in turn.
async fn listen(
    client: &tokio_postgres::Client,
    channels: &[String],
    then: &[String],
) -> Result<(), tokio_postgres::Error> {
    let listen: String = channels
        .iter()
        .map(|c| format!("LISTEN \"{c}\";"))
        .collect();
    client.batch_execute(&listen).await?;
    for statement in then {
        client.batch_execute(statement).await?;
    }
    Ok(())
}

async fn run(
    url: String,
    channels: Vec<String>,
    then: Vec<String>,
    purpose: &'static str,
    tx: mpsc::Sender<ListenEvent>,
) {
    let mut backoff = Backoff::new(Duration::from_millis(50), Duration::from_secs(5));
    loop {
        match crate::db::connect(&url, purpose).await {
            Ok((client, mut conn)) => {
                let (msg_tx, mut msg_rx) = mpsc::unbounded_channel();
                let driver = tokio::spawn(async move {
                    while let Some(m) = conn.next().await {
                        match m {
                            Ok(AsyncMessage::Notification(n)) => {
                                let _ = msg_tx.send(Ok(ListenEvent::Notification {
                                    channel: n.channel().to_string(),
                                    payload: n.payload().to_string(),
                                }));
                            }
                            Ok(_) => {}
                            Err(e) => {
                                let _ = msg_tx.send(Err(Lost::Error(e)));
                                return;
                            }
                        }
                    }
                    let _ = msg_tx.send(Err(Lost::Closed));
                });
                if let Err(e) = listen(&client, &channels, &then).await {
                    tracing::warn!(purpose, error = %crate::error_chain(&e), "LISTEN failed; reconnecting");
                    driver.abort();
                } else {
                    backoff.reset();
                    if tx.send(ListenEvent::Connected).await.is_err() {
                        driver.abort();
                        return;
                    }
                    let reason = loop {
                        match msg_rx.recv().await {
                            Some(Ok(ev)) => {
                                if tx.send(ev).await.is_err() {
                                    driver.abort();
                                    return;
                                }
                            }
                            Some(Err(e)) => break e,
                            None => break Lost::TaskEnded,
                        }
                    };
                    tracing::warn!(purpose, reason = %crate::error_chain(&reason), "listener connection lost; reconnecting");
                }
                drop(client);
            }
            Err(e) => {
                tracing::warn!(purpose, error = %crate::error_chain(&e), "listener cannot connect; retrying")
            }
        }
        if tx.is_closed() {
            return;
        }
        tokio::time::sleep(backoff.next_delay()).await;
    }
}
