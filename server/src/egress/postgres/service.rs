//! Talking to PostgreSQL: the sink's statements, and one batch applied in one
//! transaction that moves the shard's cursor (`sink_cursors`) with the rows it covers.

use super::encoding::{bigint, plan, AlertRow, Item, Plan};
use super::REFUSED_REASON;
use crate::config::PostgresConfig;
use crate::pg::{connect, describe, failure_kind, migrate, Failure, PgError};
use tokio_postgres::{Client, Statement, Transaction};

const SQL_CURSOR_LOCK: &str =
    "SELECT next_offset FROM sink_cursors WHERE node = $1 AND shard = $2 FOR UPDATE";
const SQL_CURSOR_INSERT: &str = "INSERT INTO sink_cursors (node, shard, next_offset) \
     VALUES ($1, $2, 0) ON CONFLICT DO NOTHING";
const SQL_CURSOR_SET: &str = "UPDATE sink_cursors SET next_offset = GREATEST(next_offset, $3) \
     WHERE node = $1 AND shard = $2";
const SQL_STATS_UPSERT: &str = "
    INSERT INTO device_stats AS s
        (device_id, last_seen, last_seq, readings, dead_letters, flagged, quarantined,
         updated_at)
    SELECT u.device_id, timestamptz 'epoch' + u.seen_ms * interval '1 millisecond',
           u.last_seq, u.readings, u.dead_letters, u.flagged, u.quarantined, now()
    FROM UNNEST($1::text[], $2::int8[], $3::int8[], $4::int8[], $5::int8[], $6::int8[],
                $7::int8[])
        AS u(device_id, seen_ms, last_seq, readings, dead_letters, flagged, quarantined)
    ON CONFLICT (device_id) DO UPDATE SET
        last_seen = GREATEST(s.last_seen, EXCLUDED.last_seen),
        last_seq = COALESCE(EXCLUDED.last_seq, s.last_seq),
        readings = s.readings + EXCLUDED.readings,
        dead_letters = s.dead_letters + EXCLUDED.dead_letters,
        flagged = s.flagged + EXCLUDED.flagged,
        quarantined = s.quarantined + EXCLUDED.quarantined,
        updated_at = now()";
/// One row per flagged reading; a second delivery of the same (device, seq) (another
/// node's, or a replay past a lost cursor) keeps the first row.
const SQL_ALERTS_INSERT: &str = "
    INSERT INTO alerts
        (device_id, seq, ts, received, score, detectors, quarantined, readings, location,
         region, project, node, shard, log_offset)
    SELECT u.device_id, u.seq::numeric,
           timestamptz 'epoch' + u.ts_ms * interval '1 millisecond',
           timestamptz 'epoch' + u.received_ms * interval '1 millisecond',
           u.score,
           ARRAY(SELECT jsonb_array_elements_text(u.detectors::jsonb)),
           u.quarantined, u.readings::jsonb, u.location, u.region, u.project,
           $1::text, $2::int4, u.log_offset
    FROM UNNEST($3::text[], $4::text[], $5::int8[], $6::int8[], $7::float4[], $8::text[],
                $9::bool[], $10::text[], $11::text[], $12::text[], $13::text[], $14::int8[])
        AS u(device_id, seq, ts_ms, received_ms, score, detectors, quarantined, readings,
             location, region, project, log_offset)
    ON CONFLICT (device_id, seq) DO NOTHING";
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
pub(super) struct Statements {
    pub(super) cursor_lock: Statement,
    pub(super) cursor_insert: Statement,
    pub(super) cursor_set: Statement,
    pub(super) stats_upsert: Statement,
    pub(super) dead_letters_insert: Statement,
    pub(super) alerts_insert: Statement,
    pub(super) refusal_insert: Statement,
    pub(super) refusals_in_range: Statement,
}

/// A connection with the sink's statements prepared on it.
pub(super) struct Session {
    pub(super) client: Client,
    pub(super) statements: Statements,
}

impl Session {
    pub(super) async fn open(
        config: &PostgresConfig,
        migrate_first: bool,
    ) -> Result<Self, PgError> {
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
            alerts_insert: client.prepare(SQL_ALERTS_INSERT).await?,
            refusal_insert: client.prepare(SQL_REFUSAL_INSERT).await?,
            refusals_in_range: client.prepare(SQL_REFUSALS_IN_RANGE).await?,
        };
        Ok(Self { client, statements })
    }
}

/// A shard's place in its log, as one transaction sees it.
pub(super) struct Key<'a> {
    pub(super) node: &'a str,
    pub(super) shard: i32,
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
    let flagged: Vec<i64> = plan.stats.iter().map(|d| d.flagged).collect();
    let quarantined: Vec<i64> = plan.stats.iter().map(|d| d.quarantined).collect();
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
            &[
                &devices,
                &seen_ms,
                &last_seq,
                &readings,
                &dead,
                &flagged,
                &quarantined,
            ],
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
    let alerts = write_alerts(tx, statements, key, &plan.alerts);
    let (stats, dead_letters, alerts) = tokio::join!(stats, dead_letters, alerts);
    stats?;
    dead_letters?;
    alerts?;
    Ok(())
}

/// The batch's `alerts` rows, in the same transaction as its counters and cursor.
async fn write_alerts(
    tx: &Transaction<'_>,
    statements: &Statements,
    key: &Key<'_>,
    alerts: &[AlertRow],
) -> Result<u64, tokio_postgres::Error> {
    if alerts.is_empty() {
        return Ok(0);
    }
    let devices: Vec<&str> = alerts.iter().map(|a| a.device.as_str()).collect();
    // A sequence may exceed bigint: it travels as text into a numeric column.
    let seqs: Vec<String> = alerts.iter().map(|a| a.seq.to_string()).collect();
    let ts_ms: Vec<i64> = alerts.iter().map(|a| a.ts_ms).collect();
    let received_ms: Vec<i64> = alerts.iter().map(|a| a.received_ms).collect();
    let scores: Vec<f32> = alerts.iter().map(|a| a.score).collect();
    let detectors: Vec<&str> = alerts.iter().map(|a| a.detectors_json.as_str()).collect();
    let quarantined: Vec<bool> = alerts.iter().map(|a| a.quarantined).collect();
    let readings: Vec<&str> = alerts.iter().map(|a| a.readings_json.as_str()).collect();
    let locations: Vec<&str> = alerts.iter().map(|a| a.location.as_str()).collect();
    let regions: Vec<&str> = alerts.iter().map(|a| a.region.as_str()).collect();
    let projects: Vec<&str> = alerts.iter().map(|a| a.project.as_str()).collect();
    let offsets: Vec<i64> = alerts.iter().map(|a| a.offset).collect();
    tx.execute(
        &statements.alerts_insert,
        &[
            &key.node,
            &key.shard,
            &devices,
            &seqs,
            &ts_ms,
            &received_ms,
            &scores,
            &detectors,
            &quarantined,
            &readings,
            &locations,
            &regions,
            &projects,
            &offsets,
        ],
    )
    .await
}

/// A refusal to report: the record at `offset` was refused for good.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Refusal {
    pub(super) offset: u64,
    pub(super) reason: String,
    pub(super) detail: String,
}

/// What a committed batch did.
#[derive(Debug, Default)]
pub(super) struct Outcome {
    pub(super) applied: u64,
    pub(super) bytes: u64,
    /// Refused now (counted in metrics), or earlier and found again while replaying.
    pub(super) refusals: Vec<Refusal>,
    pub(super) refused_now: u64,
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
pub(super) async fn apply_batch(
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
