//! The schema: every migration this build knows, applied in order.
//!
//! The SQL lives in `server/migrations/NNNN_name.sql`, one file per migration, embedded
//! with `include_str!`; the statistics sink and the registry both migrate before use.

use super::PgError;
use tokio_postgres::Client;

/// One schema migration, embedded in the binary.
#[derive(Debug, Clone, Copy)]
pub struct Migration {
    pub version: i32,
    pub name: &'static str,
    sql: &'static str,
}

/// Every migration this build knows, in version order (`server/migrations/NNNN_name.sql`).
pub const MIGRATIONS: [Migration; 3] = [
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
    Migration {
        version: 3,
        name: "fraud_alerts",
        sql: include_str!("../../migrations/0003_fraud_alerts.sql"),
    },
];

/// The newest schema version this build knows.
pub const SCHEMA_VERSION: i32 = MIGRATIONS[MIGRATIONS.len() - 1].version;

/// The advisory lock every migration transaction takes ("ingestd" in ASCII): nodes
/// starting together apply each migration once, one after the other.
const MIGRATION_LOCK_KEY: i64 = 0x0069_6e67_6573_7464;

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrations_are_numbered_in_order() {
        for (i, migration) in MIGRATIONS.iter().enumerate() {
            assert_eq!(migration.version, i as i32 + 1, "{}", migration.name);
            assert!(!migration.sql.trim().is_empty());
        }
        assert_eq!(SCHEMA_VERSION, MIGRATIONS.len() as i32);
    }
}
