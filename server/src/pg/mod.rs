//! PostgreSQL connections, shared by the statistics sink (`egress::postgres`) and the
//! device registry ([`registry`]): opening and driving a connection, the one error type,
//! and the schema [`migrate`] brings a database to (`server/migrations/`, embedded).
//!
//! Everything here runs as tasks on a tokio runtime (the egress thread's, or the command
//! line's) and never blocks it. Connections are plain TCP or Unix sockets for now
//! ([`open`] is the one place that would choose TLS).

pub mod migrate;
pub mod registry;

pub use migrate::{migrate, Migration, MIGRATIONS, SCHEMA_VERSION};
pub use registry::{
    import_registry, load_registry, set_device_status, watch_registry, REGISTRY_CHANNEL,
};

use crate::config::PostgresConfig;
use crate::egress::SinkError;
use crate::registry::RegistryError;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_postgres::tls::NoTlsStream;
use tokio_postgres::{AsyncMessage, Client, Connection, NoTls, Socket};

/// What went wrong talking to PostgreSQL.
#[derive(Debug, thiserror::Error)]
pub enum PgError {
    #[error("postgres: {}", describe(.0))]
    Postgres(#[from] tokio_postgres::Error),
    #[error(
        "postgres: the database schema is at version {found}, newer than this build knows \
         (up to {known}): run a newer ingestd"
    )]
    SchemaTooNew { found: i32, known: i32 },
    #[error("postgres: timed out after {ms} ms {doing}")]
    Timeout { ms: u64, doing: &'static str },
    #[error("postgres: the connection closed")]
    Closed,
    #[error("postgres: {0}")]
    Registry(#[from] RegistryError),
}

impl PgError {
    /// Whether trying again later may succeed: everything but a refusal caused by the data
    /// itself. Schema or permission problems are retried too (an operator fixes them; the
    /// records wait in the log meanwhile).
    #[must_use]
    pub fn is_retriable(&self) -> bool {
        match self {
            PgError::Postgres(error) => failure_kind(error) == Failure::Retriable,
            PgError::Timeout { .. } | PgError::Closed => true,
            PgError::SchemaTooNew { .. } | PgError::Registry(_) => false,
        }
    }
}

impl PgError {
    /// The sink's view of it: retriable or permanent.
    #[must_use]
    pub fn to_sink_error(&self) -> SinkError {
        if self.is_retriable() {
            SinkError::Retriable(self.to_string())
        } else {
            SinkError::Permanent(self.to_string())
        }
    }
}

/// A `tokio_postgres::Error` with the server's message, which its `Display` leaves out.
pub fn describe(error: &tokio_postgres::Error) -> String {
    if let Some(db) = error.as_db_error() {
        let mut text = format!("{} (SQLSTATE {})", db.message(), db.code().code());
        if let Some(detail) = db.detail() {
            text.push_str(": ");
            text.push_str(detail);
        }
        return text;
    }
    match std::error::Error::source(error) {
        Some(source) => format!("{error}: {source}"),
        None => error.to_string(),
    }
}

/// How a failed statement is handled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// Connection lost, server shutting down, serialization failure or deadlock, lack of
    /// resources, or a problem an operator must fix: try again after a backoff.
    Retriable,
    /// The data was refused (SQLSTATE classes 22 data exception, 23 integrity constraint
    /// violation, 54 program limit exceeded): the same record will always be refused.
    Content,
}

pub fn failure_kind(error: &tokio_postgres::Error) -> Failure {
    match error.code().map(|code| code.code().get(..2)) {
        Some(Some("22" | "23" | "54")) => Failure::Content,
        _ => Failure::Retriable,
    }
}

/// The connection type; it changes in this one place when TLS is added.
pub type PgConnection = Connection<Socket, NoTlsStream>;

/// Opens a connection. The caller drives the returned connection ([`drive`]).
pub async fn open(config: &PostgresConfig) -> Result<(Client, PgConnection), PgError> {
    let mut pg: tokio_postgres::Config = config.url.parse()?;
    let timeout = Duration::from_millis(config.connect_timeout_ms);
    if pg.get_connect_timeout().is_none() {
        pg.connect_timeout(timeout);
    }
    if pg.get_application_name().is_none() {
        pg.application_name("ingestd");
    }
    // The socket-level timeout does not cover the start-up exchange; this does.
    match tokio::time::timeout(timeout, pg.connect(NoTls)).await {
        Ok(result) => Ok(result?),
        Err(_) => Err(PgError::Timeout {
            ms: config.connect_timeout_ms,
            doing: "connecting",
        }),
    }
}

/// Drives a connection until it closes, passing notifications on (when asked) and
/// logging the server's notices at debug level.
///
/// A full notification queue never stops the driver (the watcher may be waiting for a
/// query answer this driver reads): the notification is left out, which
/// [`registry::NOTIFICATIONS_QUEUED_MAX`] explains is harmless.
pub async fn drive(mut connection: PgConnection, notifications: Option<mpsc::Sender<String>>) {
    loop {
        match std::future::poll_fn(|cx| connection.poll_message(cx)).await {
            Some(Ok(AsyncMessage::Notification(note))) => {
                if let Some(tx) = &notifications {
                    match tx.try_send(note.payload().to_string()) {
                        Ok(()) | Err(mpsc::error::TrySendError::Full(_)) => {}
                        Err(mpsc::error::TrySendError::Closed(_)) => return,
                    }
                }
            }
            Some(Ok(AsyncMessage::Notice(notice))) => {
                tracing::debug!(message = notice.message(), "postgres notice");
            }
            Some(Ok(_)) => {}
            Some(Err(error)) => {
                tracing::debug!(error = %describe(&error), "postgres connection ended");
                return;
            }
            None => return,
        }
    }
}

/// Connects and runs the connection as a task of the current runtime.
pub async fn connect(config: &PostgresConfig) -> Result<Client, PgError> {
    let (client, connection) = open(config).await?;
    tokio::spawn(drive(connection, None));
    Ok(client)
}
