//! The device registry in PostgreSQL: loading the `devices` table, following its changes
//! through `LISTEN ingestd_registry`, and the management commands (import, revoke).

use super::{connect, drive, migrate, open, PgError};
use crate::config::PostgresConfig;
use crate::egress::{Backoff, Retry};
use crate::registry::{DeviceRecord, DeviceStatus, Registry, RegistryError, RegistryFile};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_postgres::Client;

/// The channel the `devices` trigger notifies, with the device id as payload.
pub const REGISTRY_CHANNEL: &str = "ingestd_registry";

/// How long the registry watcher waits without a notification before it checks that its
/// connection still answers: a connection that died silently must not hide revocations.
const WATCH_PING_INTERVAL: Duration = Duration::from_secs(30);

/// Change notifications queued between the connection's driver and the watcher. When
/// the queue is full the driver drops the notification: nothing is lost, since every
/// notification only says "reload", and the ones already queued make the watcher reload
/// after this change was committed.
pub const NOTIFICATIONS_QUEUED_MAX: usize = 1024;

/// Devices written per statement by [`import_registry`].
const IMPORT_CHUNK_DEVICES: usize = 5_000;

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
    let mut backoff = Retry::unmetered(Backoff {
        base_ms: config.retry_backoff_ms,
        max_ms: config.retry_backoff_ms_max,
    });
    loop {
        let error = watch_connection(&config, &on_change, &mut backoff).await;
        let delay = backoff.next_delay(None);
        tracing::warn!(error = %error, retry_in_ms = delay.as_millis() as u64, "device registry: lost PostgreSQL; reconnecting");
        tokio::time::sleep(delay).await;
    }
}

/// One connection's life of [`watch_registry`]; returns why it ended.
async fn watch_connection(
    config: &PostgresConfig,
    on_change: &Arc<dyn Fn(Registry) + Send + Sync>,
    backoff: &mut Retry,
) -> PgError {
    let (client, connection) = match open(config).await {
        Ok(opened) => opened,
        Err(error) => return error,
    };
    let (tx, mut notifications) = mpsc::channel(NOTIFICATIONS_QUEUED_MAX);
    let driver = tokio::spawn(drive(connection, Some(tx)));
    let result: Result<std::convert::Infallible, PgError> = async {
        client
            .batch_execute(&format!("LISTEN {REGISTRY_CHANNEL}"))
            .await?;
        on_change(read_registry(&client).await?);
        backoff.succeeded();
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
}
