//! PostgreSQL: the schema and its migrations, the statistics sink, and the device registry
//! with its change notifications.
//!
//! - [`migrate`] brings a database to this build's schema (`server/migrations/`, embedded),
//!   one transaction per migration under an advisory lock, so nodes may start together.
//! - [`run`] is the statistics sink: per-device counters, last seen and last sequence, and
//!   the dead-letter index. It counts every log record exactly once although deliveries
//!   repeat after restarts and outages: each batch moves its shard's cursor
//!   (`sink_cursors`) in the same transaction as the rows it covers, and records below the
//!   cursor are skipped. It reports progress only for what is committed.
//! - [`load_registry`] and [`watch_registry`] read the device registry from the `devices`
//!   table and follow its changes through `LISTEN ingestd_registry`.
//!
//! Everything here runs as tasks on the egress thread's tokio runtime and never blocks it.
//! Connections are plain TCP or Unix sockets for now ([`open`] is the one place that
//! would choose TLS).

use crate::config::PostgresConfig;
use crate::egress::sink::Decoded;
use crate::egress::{Delivery, Progress, SinkId, SinkInput};
use crate::metrics::SinkMetrics;
use crate::registry::{DeviceRecord, DeviceStatus, Registry, RegistryError, RegistryFile};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio_postgres::tls::NoTlsStream;
use tokio_postgres::{AsyncMessage, Client, Connection, NoTls, Socket, Statement, Transaction};

/// One schema migration, embedded in the binary.
#[derive(Debug, Clone, Copy)]
pub struct Migration {
    pub version: i32,
    pub name: &'static str,
    sql: &'static str,
}

/// Every migration this build knows, in version order (`server/migrations/NNNN_name.sql`).
pub const MIGRATIONS: [Migration; 2] = [
    Migration {
        version: 1,
        name: "initial",
        sql: include_str!("../../migrations/0001_initial.sql"),
    },
    Migration {
        version: 2,
        name: "sink_refusals",
        sql: include_str!("../../migrations/0002_sink_refusals.sql"),
    },
];

/// The newest schema version this build knows.
pub const SCHEMA_VERSION: i32 = MIGRATIONS[MIGRATIONS.len() - 1].version;

/// The advisory lock every migration transaction takes ("ingestd" in ASCII): nodes
/// starting together apply each migration once, one after the other.
const MIGRATION_LOCK_KEY: i64 = 0x0069_6e67_6573_7464;

/// The channel the `devices` trigger notifies, with the device id as payload.
pub const REGISTRY_CHANNEL: &str = "ingestd_registry";

/// The reason code of a record PostgreSQL refused for good.
pub const REFUSED_REASON: &str = "postgres_refused";

/// How long the registry watcher waits without a notification before it checks that its
/// connection still answers: a connection that died silently must not hide revocations.
const WATCH_PING_INTERVAL: Duration = Duration::from_secs(30);

/// Devices written per statement by [`import_registry`].
const IMPORT_CHUNK_DEVICES: usize = 5_000;

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

/// A `tokio_postgres::Error` with the server's message, which its `Display` leaves out.
fn describe(error: &tokio_postgres::Error) -> String {
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
enum Failure {
    /// Connection lost, server shutting down, serialization failure or deadlock, lack of
    /// resources, or a problem an operator must fix: try again after a backoff.
    Retriable,
    /// The data was refused (SQLSTATE classes 22 data exception, 23 integrity constraint
    /// violation, 54 program limit exceeded): the same record will always be refused.
    Content,
}

fn failure_kind(error: &tokio_postgres::Error) -> Failure {
    match error.code().map(|code| code.code().get(..2)) {
        Some(Some("22" | "23" | "54")) => Failure::Content,
        _ => Failure::Retriable,
    }
}

/// The connection type; it changes in this one place when TLS is added.
type PgConnection = Connection<Socket, NoTlsStream>;

/// Opens a connection. The caller drives the returned connection ([`drive`]).
async fn open(config: &PostgresConfig) -> Result<(Client, PgConnection), PgError> {
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
async fn drive(mut connection: PgConnection, notifications: Option<mpsc::UnboundedSender<String>>) {
    loop {
        match std::future::poll_fn(|cx| connection.poll_message(cx)).await {
            Some(Ok(AsyncMessage::Notification(note))) => {
                if let Some(tx) = &notifications {
                    if tx.send(note.payload().to_string()).is_err() {
                        return;
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
async fn connect(config: &PostgresConfig) -> Result<Client, PgError> {
    let (client, connection) = open(config).await?;
    tokio::spawn(drive(connection, None));
    Ok(client)
}

// ---------------------------------------------------------------------------------------
// Migrations

/// Brings the database to [`SCHEMA_VERSION`]: each pending migration in its own
/// transaction, under an advisory lock so several nodes starting at once apply each one
/// once. A database at a newer version than this build knows is an error naming it.
pub async fn migrate(client: &Client) -> Result<(), PgError> {
    loop {
        client.batch_execute("BEGIN").await?;
        match migrate_step(client).await {
            Ok(applied) => {
                client.batch_execute("COMMIT").await?;
                match applied {
                    Some(migration) => tracing::info!(
                        version = migration.version,
                        name = migration.name,
                        "postgres: schema migration applied"
                    ),
                    None => return Ok(()),
                }
            }
            Err(error) => {
                // Best effort: the connection may be gone, and then so is the transaction.
                let _ = client.batch_execute("ROLLBACK").await;
                return Err(error);
            }
        }
    }
}

/// Inside a transaction: applies the next pending migration, or none when up to date.
async fn migrate_step(client: &Client) -> Result<Option<Migration>, PgError> {
    client
        .execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK_KEY])
        .await?;
    client
        .batch_execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations (
                 version    int PRIMARY KEY,
                 applied_at timestamptz NOT NULL DEFAULT now()
             )",
        )
        .await?;
    let current: i32 = client
        .query_one(
            "SELECT coalesce(max(version), 0) FROM schema_migrations",
            &[],
        )
        .await?
        .try_get(0)?;
    if current > SCHEMA_VERSION {
        return Err(PgError::SchemaTooNew {
            found: current,
            known: SCHEMA_VERSION,
        });
    }
    let Some(next) = MIGRATIONS.iter().find(|m| m.version > current) else {
        return Ok(None);
    };
    client.batch_execute(next.sql).await?;
    client
        .execute(
            "INSERT INTO schema_migrations (version, applied_at) VALUES ($1, now())",
            &[&next.version],
        )
        .await?;
    Ok(Some(*next))
}

// ---------------------------------------------------------------------------------------
// The statistics sink: what a batch does, as pure functions

/// A delivery reduced to what the statistics need, decoded once on arrival.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Item {
    offset: u64,
    body: ItemBody,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum ItemBody {
    Reading {
        device: String,
        seq: u64,
        received_ms: u64,
    },
    DeadLetter {
        device: String,
        seq: Option<u64>,
        reason: String,
        detail: String,
        received_ms: u64,
    },
    /// Undecodable or opaque: nothing to count, covered by the cursor all the same.
    Other,
}

impl Item {
    fn from_delivery(delivery: &Delivery) -> Self {
        let body = match delivery.decoded() {
            Decoded::Reading(meta) => ItemBody::Reading {
                device: meta.device.clone(),
                seq: meta.seq,
                received_ms: meta.received_ms,
            },
            Decoded::DeadLetter(meta) => ItemBody::DeadLetter {
                device: meta.device.clone(),
                seq: meta.seq,
                reason: meta.reason.clone(),
                detail: meta.detail.clone(),
                received_ms: meta.received_ms,
            },
            Decoded::Other => ItemBody::Other,
        };
        Item {
            offset: delivery.offset,
            body,
        }
    }
}

/// One device's share of a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
struct DeviceDelta {
    device: String,
    readings: i64,
    dead_letters: i64,
    /// Newest server receive time of any of its records, ms since the epoch.
    last_seen_ms: i64,
    /// Sequence of its newest reading by offset (none: no reading in the batch, or a
    /// sequence beyond bigint).
    last_seq: Option<i64>,
}

/// A dead letter's row in `dead_letters`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct DeadLetterRow {
    offset: i64,
    device: String,
    seq: Option<i64>,
    reason: String,
    detail: String,
    received_ms: i64,
}

/// What applying a batch writes, given the shard's cursor.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Plan {
    /// Per device, sorted by id (concurrent writers then lock rows in one order).
    stats: Vec<DeviceDelta>,
    dead_letters: Vec<DeadLetterRow>,
    /// Readings and dead letters counted.
    applied: u64,
    /// Records below the cursor, skipped as already applied.
    skipped: u64,
    /// Approximate bytes of the parameters sent.
    bytes: u64,
}

/// Offsets and sequences are stored as bigint; a log offset never comes near its limit.
fn bigint(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

/// What applying `items` (strictly increasing offsets) writes when the shard's cursor is
/// `cursor`: records below it are already applied and skipped. Sequence numbers above
/// bigint (allowed by the protocol, unheard of in practice) are counted but not stored.
fn plan(items: &[Item], cursor: u64) -> Plan {
    assert!(
        items.windows(2).all(|w| w[0].offset < w[1].offset),
        "a batch holds strictly increasing offsets"
    );
    let mut devices: BTreeMap<&str, DeviceDelta> = BTreeMap::new();
    let mut out = Plan::default();
    for item in items {
        if item.offset < cursor {
            out.skipped += 1;
            continue;
        }
        let (device, received_ms) = match &item.body {
            ItemBody::Reading {
                device,
                received_ms,
                ..
            }
            | ItemBody::DeadLetter {
                device,
                received_ms,
                ..
            } => (device.as_str(), bigint(*received_ms)),
            ItemBody::Other => continue,
        };
        let delta = devices.entry(device).or_insert_with(|| {
            out.bytes += device.len() as u64 + 40;
            DeviceDelta {
                device: device.to_string(),
                readings: 0,
                dead_letters: 0,
                last_seen_ms: received_ms,
                last_seq: None,
            }
        });
        delta.last_seen_ms = delta.last_seen_ms.max(received_ms);
        out.applied += 1;
        match &item.body {
            ItemBody::Reading { seq, .. } => {
                delta.readings += 1;
                delta.last_seq = i64::try_from(*seq).ok();
            }
            ItemBody::DeadLetter {
                seq,
                reason,
                detail,
                ..
            } => {
                delta.dead_letters += 1;
                out.bytes += (device.len() + reason.len() + detail.len()) as u64 + 32;
                out.dead_letters.push(DeadLetterRow {
                    offset: bigint(item.offset),
                    device: device.to_string(),
                    seq: seq.and_then(|s| i64::try_from(s).ok()),
                    reason: reason.clone(),
                    detail: detail.clone(),
                    received_ms,
                });
            }
            ItemBody::Other => {}
        }
    }
    out.stats = devices.into_values().collect();
    out
}

/// Backoff that doubles from the first delay up to the maximum.
#[derive(Debug)]
struct Backoff {
    first: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    fn new(config: &PostgresConfig) -> Self {
        let first = Duration::from_millis(config.retry_backoff_ms);
        Self {
            first,
            max: Duration::from_millis(config.retry_backoff_max_ms),
            next: first,
        }
    }

    fn next_delay(&mut self) -> Duration {
        let delay = self.next;
        self.next = (self.next * 2).min(self.max);
        delay
    }

    fn reset(&mut self) {
        self.next = self.first;
    }
}

// ---------------------------------------------------------------------------------------
// The statistics sink: talking to PostgreSQL

const SQL_CURSOR_LOCK: &str =
    "SELECT next_offset FROM sink_cursors WHERE node = $1 AND shard = $2 FOR UPDATE";
const SQL_CURSOR_INSERT: &str = "INSERT INTO sink_cursors (node, shard, next_offset) \
     VALUES ($1, $2, 0) ON CONFLICT DO NOTHING";
const SQL_CURSOR_SET: &str = "UPDATE sink_cursors SET next_offset = GREATEST(next_offset, $3) \
     WHERE node = $1 AND shard = $2";
const SQL_STATS_UPSERT: &str = "
    INSERT INTO device_stats AS s
        (device_id, last_seen, last_seq, readings, dead_letters, updated_at)
    SELECT u.device_id, timestamptz 'epoch' + u.seen_ms * interval '1 millisecond',
           u.last_seq, u.readings, u.dead_letters, now()
    FROM UNNEST($1::text[], $2::int8[], $3::int8[], $4::int8[], $5::int8[])
        AS u(device_id, seen_ms, last_seq, readings, dead_letters)
    ON CONFLICT (device_id) DO UPDATE SET
        last_seen = GREATEST(s.last_seen, EXCLUDED.last_seen),
        last_seq = COALESCE(EXCLUDED.last_seq, s.last_seq),
        readings = s.readings + EXCLUDED.readings,
        dead_letters = s.dead_letters + EXCLUDED.dead_letters,
        updated_at = now()";
const SQL_DEAD_LETTERS_INSERT: &str = "
    INSERT INTO dead_letters
        (node, shard, log_offset, device_id, seq, reason, detail, received_at)
    SELECT $1::text, $2::int4, u.log_offset, u.device_id, u.seq, u.reason, u.detail,
           timestamptz 'epoch' + u.received_ms * interval '1 millisecond'
    FROM UNNEST($3::int8[], $4::text[], $5::int8[], $6::text[], $7::text[], $8::int8[])
        AS u(log_offset, device_id, seq, reason, detail, received_ms)
    ON CONFLICT DO NOTHING";
const SQL_REFUSAL_INSERT: &str = "
    INSERT INTO sink_refusals (node, shard, log_offset, reason, detail)
    VALUES ($1, $2, $3, $4, $5)
    ON CONFLICT (node, shard, log_offset)
        DO UPDATE SET reason = EXCLUDED.reason, detail = EXCLUDED.detail, refused_at = now()";
const SQL_REFUSALS_IN_RANGE: &str = "
    SELECT log_offset, reason, detail FROM sink_refusals
    WHERE node = $1 AND shard = $2 AND log_offset >= $3 AND log_offset < $4
    ORDER BY log_offset";

/// The sink's prepared statements.
struct Statements {
    cursor_lock: Statement,
    cursor_insert: Statement,
    cursor_set: Statement,
    stats_upsert: Statement,
    dead_letters_insert: Statement,
    refusal_insert: Statement,
    refusals_in_range: Statement,
}

/// A connection with the sink's statements prepared on it.
struct Session {
    client: Client,
    statements: Statements,
}

impl Session {
    async fn open(config: &PostgresConfig, migrate_first: bool) -> Result<Self, PgError> {
        let client = connect(config).await?;
        if migrate_first {
            migrate(&client).await?;
        }
        let statements = Statements {
            cursor_lock: client.prepare(SQL_CURSOR_LOCK).await?,
            cursor_insert: client.prepare(SQL_CURSOR_INSERT).await?,
            cursor_set: client.prepare(SQL_CURSOR_SET).await?,
            stats_upsert: client.prepare(SQL_STATS_UPSERT).await?,
            dead_letters_insert: client.prepare(SQL_DEAD_LETTERS_INSERT).await?,
            refusal_insert: client.prepare(SQL_REFUSAL_INSERT).await?,
            refusals_in_range: client.prepare(SQL_REFUSALS_IN_RANGE).await?,
        };
        Ok(Self { client, statements })
    }
}

/// A shard's place in its log, as one transaction sees it.
struct Key<'a> {
    node: &'a str,
    shard: i32,
}

/// Locks the shard's cursor row for this transaction (creating it at 0 the first time)
/// and returns it.
async fn lock_cursor(
    tx: &Transaction<'_>,
    statements: &Statements,
    key: &Key<'_>,
) -> Result<u64, tokio_postgres::Error> {
    for _ in 0..2 {
        if let Some(row) = tx
            .query_opt(&statements.cursor_lock, &[&key.node, &key.shard])
            .await?
        {
            let next: i64 = row.try_get(0)?;
            return Ok(u64::try_from(next).unwrap_or(0));
        }
        tx.execute(&statements.cursor_insert, &[&key.node, &key.shard])
            .await?;
    }
    // The row was inserted (or already there) just above and rows are never deleted.
    Ok(0)
}

/// Writes a plan's rows, the statements pipelined. The first failure in sending order
/// is returned: later statements of an aborted transaction only fail in its wake.
async fn write_plan(
    tx: &Transaction<'_>,
    statements: &Statements,
    key: &Key<'_>,
    plan: &Plan,
) -> Result<(), tokio_postgres::Error> {
    let devices: Vec<&str> = plan.stats.iter().map(|d| d.device.as_str()).collect();
    let seen_ms: Vec<i64> = plan.stats.iter().map(|d| d.last_seen_ms).collect();
    let last_seq: Vec<Option<i64>> = plan.stats.iter().map(|d| d.last_seq).collect();
    let readings: Vec<i64> = plan.stats.iter().map(|d| d.readings).collect();
    let dead: Vec<i64> = plan.stats.iter().map(|d| d.dead_letters).collect();
    let rows = &plan.dead_letters;
    let offsets: Vec<i64> = rows.iter().map(|r| r.offset).collect();
    let dl_devices: Vec<&str> = rows.iter().map(|r| r.device.as_str()).collect();
    let seqs: Vec<Option<i64>> = rows.iter().map(|r| r.seq).collect();
    let reasons: Vec<&str> = rows.iter().map(|r| r.reason.as_str()).collect();
    let details: Vec<&str> = rows.iter().map(|r| r.detail.as_str()).collect();
    let received: Vec<i64> = rows.iter().map(|r| r.received_ms).collect();
    let stats = async {
        if devices.is_empty() {
            return Ok(0);
        }
        tx.execute(
            &statements.stats_upsert,
            &[&devices, &seen_ms, &last_seq, &readings, &dead],
        )
        .await
    };
    let dead_letters = async {
        if rows.is_empty() {
            return Ok(0);
        }
        tx.execute(
            &statements.dead_letters_insert,
            &[
                &key.node,
                &key.shard,
                &offsets,
                &dl_devices,
                &seqs,
                &reasons,
                &details,
                &received,
            ],
        )
        .await
    };
    let (stats, dead_letters) = tokio::join!(stats, dead_letters);
    stats?;
    dead_letters?;
    Ok(())
}

/// A refusal to report: the record at `offset` was refused for good.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Refusal {
    offset: u64,
    reason: String,
    detail: String,
}

/// What a committed batch did.
#[derive(Debug, Default)]
struct Outcome {
    applied: u64,
    bytes: u64,
    /// Refused now (counted in metrics), or earlier and found again while replaying.
    refusals: Vec<Refusal>,
    refused_now: u64,
}

/// Refusals recorded earlier for the range a replay skipped.
async fn earlier_refusals(
    tx: &Transaction<'_>,
    statements: &Statements,
    key: &Key<'_>,
    from: u64,
    to: u64,
) -> Result<Vec<Refusal>, tokio_postgres::Error> {
    let rows = tx
        .query(
            &statements.refusals_in_range,
            &[&key.node, &key.shard, &bigint(from), &bigint(to)],
        )
        .await?;
    rows.iter()
        .map(|row| {
            Ok(Refusal {
                offset: u64::try_from(row.try_get::<_, i64>(0)?).unwrap_or(0),
                reason: row.try_get(1)?,
                detail: row.try_get(2)?,
            })
        })
        .collect()
}

/// Applies a batch in one transaction: lock the cursor, skip what it covers, write the
/// rest, move the cursor to `end`, commit. With `bisect`, the records are applied in
/// savepoints, halving a failing range until the records PostgreSQL refuses are found;
/// those are recorded in `sink_refusals` and skipped.
async fn apply_batch(
    session: &mut Session,
    node: &str,
    shard: usize,
    items: &[Item],
    end: u64,
    bisect: bool,
) -> Result<Outcome, tokio_postgres::Error> {
    let statements = &session.statements;
    let key = Key {
        node,
        shard: i32::try_from(shard).unwrap_or(i32::MAX),
    };
    let mut tx = session.client.transaction().await?;
    let cursor = lock_cursor(&tx, statements, &key).await?;
    let mut outcome = Outcome::default();
    if let Some(first) = items.first() {
        if first.offset < cursor {
            outcome.refusals =
                earlier_refusals(&tx, statements, &key, first.offset, cursor.min(end)).await?;
        }
    }
    if bisect {
        let mut ranges = vec![(0, items.len())];
        while let Some((lo, hi)) = ranges.pop() {
            let part = plan(&items[lo..hi], cursor);
            if part.applied == 0 {
                continue;
            }
            let savepoint = tx.savepoint("part").await?;
            match write_plan(&savepoint, statements, &key, &part).await {
                Ok(()) => {
                    savepoint.commit().await?;
                    outcome.applied += part.applied;
                    outcome.bytes += part.bytes;
                }
                Err(error) if failure_kind(&error) == Failure::Content => {
                    savepoint.rollback().await?;
                    if hi - lo == 1 {
                        let refusal = Refusal {
                            offset: items[lo].offset,
                            reason: REFUSED_REASON.to_string(),
                            detail: describe(&error),
                        };
                        tx.execute(
                            &statements.refusal_insert,
                            &[
                                &key.node,
                                &key.shard,
                                &bigint(refusal.offset),
                                &refusal.reason,
                                &refusal.detail,
                            ],
                        )
                        .await?;
                        outcome.refusals.push(refusal);
                        outcome.refused_now += 1;
                    } else {
                        // Left half popped first: records stay in offset order.
                        let mid = lo + (hi - lo) / 2;
                        ranges.push((mid, hi));
                        ranges.push((lo, mid));
                    }
                }
                Err(error) => return Err(error),
            }
        }
    } else {
        let whole = plan(items, cursor);
        write_plan(&tx, statements, &key, &whole).await?;
        outcome.applied = whole.applied;
        outcome.bytes = whole.bytes;
    }
    tx.execute(
        &statements.cursor_set,
        &[&key.node, &key.shard, &bigint(end)],
    )
    .await?;
    tx.commit().await?;
    Ok(outcome)
}

/// Per shard: records waiting for the next batch, and how far progress was reported.
#[derive(Debug, Default)]
struct ShardState {
    items: Vec<Item>,
    reported_end: u64,
}

/// The sink's state between batches.
struct Sink {
    config: PostgresConfig,
    node: String,
    progress: mpsc::UnboundedSender<Progress>,
    metrics: Arc<SinkMetrics>,
    shard_count: usize,
    session: Option<Session>,
    /// Migrations ran on some connection of this sink.
    migrated: bool,
    shards: BTreeMap<usize, ShardState>,
    /// Records waiting across all shards.
    pending: usize,
    backoff: Backoff,
}

impl Sink {
    /// Queues a delivery. A delivery at or below the shard's last queued offset starts a
    /// replay: what is queued goes first, so a batch never holds an offset twice.
    async fn push(&mut self, delivery: &Delivery) {
        assert!(
            delivery.shard < self.shard_count,
            "delivery for shard {} of {}",
            delivery.shard,
            self.shard_count
        );
        let rewinds = self
            .shards
            .get(&delivery.shard)
            .and_then(|s| s.items.last())
            .is_some_and(|last| delivery.offset <= last.offset);
        if rewinds {
            self.flush_shard(delivery.shard).await;
        }
        self.shards
            .entry(delivery.shard)
            .or_default()
            .items
            .push(Item::from_delivery(delivery));
        self.pending += 1;
    }

    async fn flush_all(&mut self) {
        let shards: Vec<usize> = self
            .shards
            .iter()
            .filter(|(_, s)| !s.items.is_empty())
            .map(|(&shard, _)| shard)
            .collect();
        for shard in shards {
            self.flush_shard(shard).await;
        }
    }

    /// Applies the shard's queued records, retrying until they are committed, then
    /// reports refusals and progress.
    async fn flush_shard(&mut self, shard: usize) {
        let Some(state) = self.shards.get_mut(&shard) else {
            return;
        };
        let items = std::mem::take(&mut state.items);
        let Some(last) = items.last() else {
            return;
        };
        let end = last.offset + 1;
        let mut bisect = false;
        let outcome = loop {
            match self.attempt(shard, &items, end, bisect).await {
                Ok(outcome) => break outcome,
                Err(PgError::Postgres(error))
                    if !bisect && failure_kind(&error) == Failure::Content =>
                {
                    tracing::warn!(
                        shard,
                        error = %error,
                        "postgres refused a batch: applying its records in parts to find the refused ones"
                    );
                    bisect = true;
                }
                Err(error) => {
                    self.metrics.failures.inc();
                    self.metrics.up.set(0);
                    let delay = self.backoff.next_delay();
                    tracing::warn!(
                        shard,
                        records = items.len(),
                        retry_in_ms = delay.as_millis() as u64,
                        error = %error,
                        "postgres write failed; retrying"
                    );
                    if self.session.as_ref().is_none_or(|s| s.client.is_closed())
                        || matches!(error, PgError::Timeout { .. })
                    {
                        self.session = None;
                    }
                    tokio::time::sleep(delay).await;
                    self.metrics.retries.inc();
                }
            }
        };
        self.backoff.reset();
        self.metrics.up.set(1);
        self.metrics.batches.inc();
        self.metrics.records.add(outcome.applied);
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        for item in &items {
            if let ItemBody::Reading { received_ms, .. } = &item.body {
                self.metrics
                    .visible
                    .observe_us(now_ms.saturating_sub(*received_ms) * 1000);
            }
        }
        self.metrics.bytes.add(outcome.bytes);
        self.metrics.refused.add(outcome.refused_now);
        self.pending -= items.len();
        for refusal in outcome.refusals {
            tracing::warn!(
                shard,
                offset = refusal.offset,
                detail = %refusal.detail,
                "postgres refused a record for good"
            );
            let _ = self.progress.send(Progress::Refused {
                sink: SinkId::Postgres,
                shard,
                offset: refusal.offset,
                reason: refusal.reason,
                detail: refusal.detail,
            });
        }
        let state = self.shards.entry(shard).or_default();
        if end > state.reported_end {
            state.reported_end = end;
            // A closed progress channel means the node is going down; the cursor holds.
            let _ = self.progress.send(Progress::Through {
                sink: SinkId::Postgres,
                shard,
                end,
            });
        }
    }

    /// One try at a batch: (re)connects when needed, then one transaction, bounded by
    /// `write_timeout_ms`. A try that timed out after its commit reached the server is
    /// harmless to repeat: the cursor skips what it applied.
    async fn attempt(
        &mut self,
        shard: usize,
        items: &[Item],
        end: u64,
        bisect: bool,
    ) -> Result<Outcome, PgError> {
        let session = match self.session.take() {
            Some(session) => session,
            None => {
                let session = Session::open(&self.config, !self.migrated).await?;
                self.migrated = true;
                self.metrics.up.set(1);
                session
            }
        };
        let session = self.session.insert(session);
        let started = Instant::now();
        let timeout = Duration::from_millis(self.config.write_timeout_ms);
        let result = tokio::time::timeout(
            timeout,
            apply_batch(session, &self.node, shard, items, end, bisect),
        )
        .await;
        match result {
            Ok(Ok(outcome)) => {
                self.metrics
                    .latency
                    .observe_us(started.elapsed().as_micros() as u64);
                Ok(outcome)
            }
            Ok(Err(error)) => Err(error.into()),
            Err(_) => Err(PgError::Timeout {
                ms: self.config.write_timeout_ms,
                doing: "writing a batch",
            }),
        }
    }
}

/// The statistics sink: applies deliveries to `device_stats` and `dead_letters` in
/// batches of at most `batch_records_max` records or `flush_interval_ms`, each batch one
/// transaction that moves its shard's cursor, and reports `Through` once committed.
/// Returns when `input.rx` is closed and everything received is applied and reported.
pub async fn run(config: PostgresConfig, node_id: String, input: SinkInput) {
    let SinkInput {
        mut rx,
        progress,
        metrics,
        shards,
    } = input;
    let flush_interval = Duration::from_millis(config.flush_interval_ms);
    let batch_records_max = config.batch_records_max;
    let mut sink = Sink {
        backoff: Backoff::new(&config),
        config,
        node: node_id,
        progress,
        metrics,
        shard_count: shards,
        session: None,
        migrated: false,
        shards: BTreeMap::new(),
        pending: 0,
    };
    // When the oldest queued record must be written at the latest.
    let mut deadline: Option<tokio::time::Instant> = None;
    loop {
        let received = match deadline {
            Some(at) => tokio::select! {
                received = rx.recv() => received,
                () = tokio::time::sleep_until(at) => {
                    sink.flush_all().await;
                    deadline = None;
                    continue;
                }
            },
            None => rx.recv().await,
        };
        let Some(delivery) = received else {
            break;
        };
        sink.push(&delivery).await;
        if sink.pending == 0 {
            deadline = None;
        } else if deadline.is_none() {
            deadline = Some(tokio::time::Instant::now() + flush_interval);
        }
        if sink.pending >= batch_records_max {
            sink.flush_all().await;
            deadline = None;
        }
    }
    sink.flush_all().await;
}

// ---------------------------------------------------------------------------------------
// The device registry

fn status_name(status: DeviceStatus) -> &'static str {
    match status {
        DeviceStatus::Active => "active",
        DeviceStatus::Revoked => "revoked",
    }
}

/// Builds a registry from rows, leaving out (and returning, as id and problem) every row
/// the server refuses. The rows are checked by [`Registry::from_file`] itself: all at
/// once when they are all good, one at a time to find the bad ones otherwise.
fn registry_from_rows(
    rows: Vec<DeviceRecord>,
) -> Result<(Registry, Vec<(String, String)>), RegistryError> {
    let whole = RegistryFile {
        version: 1,
        devices: rows,
    };
    if let Ok(registry) = Registry::from_file(whole.clone()) {
        return Ok((registry, Vec::new()));
    }
    let mut good = Vec::with_capacity(whole.devices.len());
    let mut bad = Vec::new();
    for row in whole.devices {
        let single = RegistryFile {
            version: 1,
            devices: vec![row],
        };
        match Registry::from_file(single.clone()) {
            Ok(_) => good.extend(single.devices),
            Err(RegistryError::Device { id, problem, .. }) => bad.push((id, problem)),
            Err(other) => return Err(other),
        }
    }
    let registry = Registry::from_file(RegistryFile {
        version: 1,
        devices: good,
    })?;
    Ok((registry, bad))
}

/// Reads and checks the `devices` table.
async fn read_registry(client: &Client) -> Result<Registry, PgError> {
    let rows = client
        .query(
            "SELECT device_id, public_key, status, location, region, project, sensor_type \
             FROM devices ORDER BY device_id",
            &[],
        )
        .await?;
    let mut records = Vec::with_capacity(rows.len());
    for row in rows {
        let id: String = row.try_get(0)?;
        let status: String = row.try_get(2)?;
        let status = match status.as_str() {
            "active" => DeviceStatus::Active,
            "revoked" => DeviceStatus::Revoked,
            other => {
                tracing::warn!(device = %id, status = other, "device registry: skipping a device with an unknown status");
                continue;
            }
        };
        records.push(DeviceRecord {
            id,
            public_key: row.try_get(1)?,
            status,
            location: row.try_get(3)?,
            region: row.try_get(4)?,
            project: row.try_get(5)?,
            sensor_type: row.try_get(6)?,
        });
    }
    let (registry, bad) = registry_from_rows(records)?;
    for (device, problem) in bad {
        tracing::warn!(device = %device, problem = %problem, "device registry: skipping a device PostgreSQL holds but the server refuses");
    }
    Ok(registry)
}

/// Connects, migrates, and reads the device registry from the `devices` table. A row the
/// server would refuse (bad id, bad or weak key) is skipped with a warning naming the
/// device and the problem; the others are served.
pub async fn load_registry(config: &PostgresConfig) -> Result<Registry, PgError> {
    let client = connect(config).await?;
    migrate(&client).await?;
    read_registry(&client).await
}

/// Follows the registry: `LISTEN ingestd_registry` on a connection of its own, and on
/// every notification (a burst counts once: what is queued is drained first) reloads the
/// registry and hands it to `on_change`. It also reloads once after every (re)connection,
/// the first included: changes made while it was not listening were not notified. A lost
/// connection is reopened with backoff. Runs until the runtime stops.
pub async fn watch_registry(
    config: PostgresConfig,
    on_change: Arc<dyn Fn(Registry) + Send + Sync>,
) {
    let mut backoff = Backoff::new(&config);
    loop {
        let error = watch_connection(&config, &on_change, &mut backoff).await;
        let delay = backoff.next_delay();
        tracing::warn!(error = %error, retry_in_ms = delay.as_millis() as u64, "device registry: lost PostgreSQL; reconnecting");
        tokio::time::sleep(delay).await;
    }
}

/// One connection's life of [`watch_registry`]; returns why it ended.
async fn watch_connection(
    config: &PostgresConfig,
    on_change: &Arc<dyn Fn(Registry) + Send + Sync>,
    backoff: &mut Backoff,
) -> PgError {
    let (client, connection) = match open(config).await {
        Ok(opened) => opened,
        Err(error) => return error,
    };
    let (tx, mut notifications) = mpsc::unbounded_channel();
    let driver = tokio::spawn(drive(connection, Some(tx)));
    let result: Result<std::convert::Infallible, PgError> = async {
        client
            .batch_execute(&format!("LISTEN {REGISTRY_CHANNEL}"))
            .await?;
        on_change(read_registry(&client).await?);
        backoff.reset();
        loop {
            let received = tokio::select! {
                received = notifications.recv() => received,
                () = tokio::time::sleep(WATCH_PING_INTERVAL) => {
                    ping(&client, config).await?;
                    continue;
                }
            };
            let Some(first) = received else {
                // The driver dropped the sender: the connection ended.
                return Err(PgError::Closed);
            };
            let mut changed = 1;
            while notifications.try_recv().is_ok() {
                changed += 1;
            }
            let registry = read_registry(&client).await?;
            tracing::info!(changed, first = %first, devices = registry.len(), "device registry: reloaded from PostgreSQL");
            on_change(registry);
        }
    }
    .await;
    driver.abort();
    match result {
        Ok(never) => match never {},
        Err(error) => error,
    }
}

/// Checks that a quiet connection still answers.
async fn ping(client: &Client, config: &PostgresConfig) -> Result<(), PgError> {
    let answer = tokio::time::timeout(
        Duration::from_millis(config.connect_timeout_ms),
        client.simple_query("SELECT 1"),
    )
    .await
    .map_err(|_| PgError::Timeout {
        ms: config.connect_timeout_ms,
        doing: "checking the registry connection",
    })?;
    answer?;
    Ok(())
}

/// Writes every device of `file` into the `devices` table (insert or update by id) in one
/// transaction, after checking the file as the server would. Devices already identical
/// are left alone (no change notification). Returns how many were inserted or changed.
pub async fn import_registry(
    config: &PostgresConfig,
    file: &RegistryFile,
) -> Result<usize, PgError> {
    Registry::from_file(file.clone())?;
    let mut client = connect(config).await?;
    migrate(&client).await?;
    let tx = client.transaction().await?;
    let upsert = tx
        .prepare(
            "INSERT INTO devices AS d
                 (device_id, public_key, status, location, region, project, sensor_type)
             SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::text[],
                                  $6::text[], $7::text[])
             ON CONFLICT (device_id) DO UPDATE SET
                 public_key = EXCLUDED.public_key, status = EXCLUDED.status,
                 location = EXCLUDED.location, region = EXCLUDED.region,
                 project = EXCLUDED.project, sensor_type = EXCLUDED.sensor_type
             WHERE (d.public_key, d.status, d.location, d.region, d.project, d.sensor_type)
                 IS DISTINCT FROM (EXCLUDED.public_key, EXCLUDED.status, EXCLUDED.location,
                                   EXCLUDED.region, EXCLUDED.project, EXCLUDED.sensor_type)",
        )
        .await?;
    let mut changed = 0;
    for chunk in file.devices.chunks(IMPORT_CHUNK_DEVICES) {
        let column = |get: fn(&DeviceRecord) -> &str| chunk.iter().map(get).collect::<Vec<_>>();
        changed += tx
            .execute(
                &upsert,
                &[
                    &column(|d| &d.id),
                    &column(|d| &d.public_key),
                    &column(|d| status_name(d.status)),
                    &column(|d| &d.location),
                    &column(|d| &d.region),
                    &column(|d| &d.project),
                    &column(|d| &d.sensor_type),
                ],
            )
            .await?;
    }
    tx.commit().await?;
    Ok(usize::try_from(changed).unwrap_or(usize::MAX))
}

/// Sets one device's status (revoking it disconnects it on every node following the
/// registry). Returns false when PostgreSQL holds no such device.
pub async fn set_device_status(
    config: &PostgresConfig,
    device_id: &str,
    status: DeviceStatus,
) -> Result<bool, PgError> {
    let client = connect(config).await?;
    migrate(&client).await?;
    let updated = client
        .execute(
            "UPDATE devices SET status = $2 WHERE device_id = $1",
            &[&device_id, &status_name(status)],
        )
        .await?;
    Ok(updated == 1)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn reading(offset: u64, device: &str, seq: u64, received_ms: u64) -> Item {
        Item {
            offset,
            body: ItemBody::Reading {
                device: device.to_string(),
                seq,
                received_ms,
            },
        }
    }

    fn dead_letter(offset: u64, device: &str, seq: Option<u64>, received_ms: u64) -> Item {
        Item {
            offset,
            body: ItemBody::DeadLetter {
                device: device.to_string(),
                seq,
                reason: "bad_signature".to_string(),
                detail: "signature does not verify".to_string(),
                received_ms,
            },
        }
    }

    #[test]
    fn a_batch_aggregates_per_device() {
        let items = [
            reading(10, "b", 7, 1_000),
            reading(11, "a", 3, 1_005),
            dead_letter(12, "b", Some(99), 1_010),
            reading(13, "b", 8, 990),
            Item {
                offset: 14,
                body: ItemBody::Other,
            },
            dead_letter(15, "c", None, 1_020),
        ];
        let plan = plan(&items, 0);
        assert_eq!(plan.applied, 5);
        assert_eq!(plan.skipped, 0);
        let devices: Vec<_> = plan.stats.iter().map(|d| d.device.as_str()).collect();
        assert_eq!(devices, ["a", "b", "c"], "sorted by id");
        let b = &plan.stats[1];
        assert_eq!((b.readings, b.dead_letters), (2, 1));
        // Newest reading by offset, not the largest, and a dead letter's seq is ignored.
        assert_eq!(b.last_seq, Some(8));
        assert_eq!(b.last_seen_ms, 1_010, "newest receive time of any record");
        let c = &plan.stats[2];
        assert_eq!((c.readings, c.dead_letters, c.last_seq), (0, 1, None));
        assert_eq!(plan.dead_letters.len(), 2);
        assert_eq!(plan.dead_letters[0].offset, 12);
        assert_eq!(plan.dead_letters[0].seq, Some(99));
        assert_eq!(plan.dead_letters[1].seq, None);
        assert!(plan.bytes > 0);
    }

    #[test]
    fn records_below_the_cursor_are_skipped() {
        let items: Vec<Item> = (100..110).map(|o| reading(o, "a", o * 2, o)).collect();
        let plan = plan(&items, 105);
        assert_eq!((plan.applied, plan.skipped), (5, 5));
        assert_eq!(plan.stats[0].readings, 5);
        assert_eq!(plan.stats[0].last_seq, Some(218));
        let all_done = super::plan(&items, 110);
        assert_eq!((all_done.applied, all_done.skipped), (0, 10));
        assert!(all_done.stats.is_empty());
        let fresh = super::plan(&items, 0);
        assert_eq!(fresh.applied, 10);
    }

    #[test]
    fn a_sequence_beyond_bigint_is_counted_not_stored() {
        let plan = plan(&[reading(0, "a", u64::MAX, 5)], 0);
        assert_eq!(plan.stats[0].readings, 1);
        assert_eq!(plan.stats[0].last_seq, None);
    }

    #[test]
    #[should_panic(expected = "strictly increasing")]
    fn a_batch_never_repeats_an_offset() {
        let _ = plan(&[reading(5, "a", 1, 1), reading(5, "a", 1, 1)], 0);
    }

    #[test]
    fn backoff_doubles_to_its_maximum_and_resets() {
        let config = PostgresConfig {
            retry_backoff_ms: 100,
            retry_backoff_max_ms: 350,
            ..PostgresConfig::default()
        };
        let mut backoff = Backoff::new(&config);
        let delays: Vec<u128> = (0..4).map(|_| backoff.next_delay().as_millis()).collect();
        assert_eq!(delays, [100, 200, 350, 350]);
        backoff.reset();
        assert_eq!(backoff.next_delay().as_millis(), 100);
    }

    #[test]
    fn registry_rows_the_server_refuses_are_left_out() {
        let (file, _) = crate::registry::provision(3, "dev-", &mut rand::rngs::OsRng);
        let mut rows = file.devices;
        rows[1].public_key =
            "0100000000000000000000000000000000000000000000000000000000000000".to_string();
        rows.push(DeviceRecord {
            id: "bad id".to_string(),
            ..rows[0].clone()
        });
        let (registry, bad) = registry_from_rows(rows).unwrap();
        assert_eq!(registry.len(), 2);
        assert!(registry.get("dev-000000").is_some());
        assert!(registry.get("dev-000001").is_none());
        assert_eq!(bad.len(), 2);
        assert_eq!(bad[0].0, "dev-000001");
        assert!(bad[0].1.contains("weak"), "{}", bad[0].1);
        assert_eq!(bad[1].0, "bad id");
    }

    #[test]
    fn migrations_are_numbered_in_order() {
        for (i, migration) in MIGRATIONS.iter().enumerate() {
            assert_eq!(migration.version, i as i32 + 1, "{}", migration.name);
            assert!(!migration.sql.trim().is_empty());
        }
        assert_eq!(SCHEMA_VERSION, MIGRATIONS.len() as i32);
    }
}
