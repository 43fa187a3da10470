//! The connection a batch is applied on, inside a transaction. Runners, rebuilds and the
//! careful pass use tokio-postgres transactions (and their savepoints); the live round
//! begins its transaction itself, so that BEGIN goes out pipelined with the round's first
//! statements instead of costing a round trip of its own ([`Begun`]).

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};

use deadpool_postgres::{Client, Object, Transaction};
use tokio_postgres::types::ToSql;
use tokio_postgres::{Error, Row, Statement, ToStatement};

/// Where a projection applies a batch: always inside a transaction that the runtime commits
/// together with the projection's position.
#[derive(Clone, Copy)]
pub enum Tx<'a> {
    Transaction(&'a Transaction<'a>),
    /// A pooled client inside a transaction the runtime began with a BEGIN statement.
    Begun(&'a Begun),
}

impl<'a> From<&'a Transaction<'a>> for Tx<'a> {
    fn from(tx: &'a Transaction<'a>) -> Self {
        Tx::Transaction(tx)
    }
}

impl Tx<'_> {
    /// A prepared statement from the connection's cache (prepared the first time).
    pub async fn prepare_cached(&self, query: &str) -> Result<Statement, Error> {
        match self {
            Tx::Transaction(t) => t.prepare_cached(query).await,
            Tx::Begun(b) => {
                // Counted while under way: see [`Begun::preparing`].
                b.preparing.fetch_add(1, Ordering::SeqCst);
                let prepared = b.client().prepare_cached(query).await;
                b.preparing.fetch_sub(1, Ordering::SeqCst);
                prepared
            }
        }
    }

    pub async fn execute<T>(
        &self,
        statement: &T,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<u64, Error>
    where
        T: ?Sized + ToStatement,
    {
        match self {
            Tx::Transaction(t) => t.execute(statement, params).await,
            Tx::Begun(b) => b.client().execute(statement, params).await,
        }
    }

    pub async fn query<T>(
        &self,
        statement: &T,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<Row>, Error>
    where
        T: ?Sized + ToStatement,
    {
        match self {
            Tx::Transaction(t) => t.query(statement, params).await,
            Tx::Begun(b) => b.client().query(statement, params).await,
        }
    }

    pub async fn batch_execute(&self, query: &str) -> Result<(), Error> {
        match self {
            Tx::Transaction(t) => t.batch_execute(query).await,
            Tx::Begun(b) => b.client().batch_execute(query).await,
        }
    }
}

/// A pooled connection inside a transaction begun with a BEGIN statement. It ends with
/// [`Begun::commit_in_pipeline`] (then [`Begun::release`]) or [`Begun::rollback`]; dropped
/// without either (an error, a cancelled task), the connection is closed instead of going
/// back to the pool mid-transaction, and PostgreSQL rolls the transaction back and releases
/// its locks.
pub struct Begun {
    client: Option<Object>,
    /// Statements being prepared through [`Tx::prepare_cached`] now: a statement waiting for
    /// its Parse goes out only after it, so a COMMIT sent meanwhile would overtake it.
    preparing: AtomicUsize,
}

impl Begun {
    /// Takes the connection; the caller sends BEGIN first on it (pipelined with what follows).
    pub(super) fn new(client: Object) -> Self {
        Begun {
            client: Some(client),
            preparing: AtomicUsize::new(0),
        }
    }

    pub(super) fn client(&self) -> &Client {
        self.client
            .as_ref()
            .expect("a Begun holds its client until it ends")
    }

    pub(super) fn tx(&self) -> Tx<'_> {
        Tx::Begun(self)
    }

    /// Whether a statement of this transaction waits for its Parse (and is not sent yet).
    pub(super) fn preparing(&self) -> bool {
        self.preparing.load(Ordering::SeqCst) > 0
    }

    /// Sends COMMIT (on its first poll) and answers with its outcome. More may go out behind
    /// it on [`Begun::client`] in the same round trip, a next transaction's BEGIN too;
    /// afterwards [`Begun::release`] the connection, or keep it for that next transaction.
    /// When a statement of the transaction failed, the COMMIT rolls back and still answers
    /// Ok: the caller must look at the statements' answers.
    pub(super) fn commit_in_pipeline(&self) -> impl Future<Output = Result<(), Error>> + '_ {
        self.client().batch_execute("COMMIT")
    }

    /// Hands the connection back to the pool, out of any transaction.
    pub(super) fn release(mut self) {
        drop(self.client.take());
    }

    pub(super) async fn rollback(mut self) -> Result<(), Error> {
        let client = self.client.take().expect("ended once");
        client.batch_execute("ROLLBACK").await
    }
}

impl Drop for Begun {
    fn drop(&mut self) {
        if let Some(client) = self.client.take() {
            drop(Object::take(client));
        }
    }
}
