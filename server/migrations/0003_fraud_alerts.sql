-- Fraud verdicts (docs/FRAUD.md) in PostgreSQL: one row per flagged reading in `alerts`,
-- and per-device counts of flagged and quarantined readings in `device_stats`. Both are
-- written by the statistics sink in the transaction that moves the shard's cursor, so a
-- replay never counts a reading twice; the alert's key (device_id, seq) also keeps a
-- reading delivered by two nodes, or replayed past a lost cursor, to one row.
--
-- PostgreSQL keeps no row per reading (the readings themselves go to Kafka and InfluxDB),
-- so a quarantined reading is marked here by its alert row (`quarantined`, when it was
-- also flagged, as with the default thresholds) and counted in device_stats.quarantined.

-- The unused placeholder of 0001: nothing ever wrote it, and `alerts` replaces it.
DROP TABLE IF EXISTS fraud_alerts;

CREATE TABLE alerts (
    device_id   text          NOT NULL,
    -- The device's sequence number: 0..2^64-1 (docs/PROTOCOL.md), beyond bigint.
    seq         numeric(20,0) NOT NULL CHECK (seq >= 0),
    -- Device time, and when the server received the reading.
    ts          timestamptz   NOT NULL,
    received    timestamptz   NOT NULL,
    score       real          NOT NULL,
    -- The stable names of the detectors that fired, in detector order (docs/FRAUD.md).
    detectors   text[]        NOT NULL DEFAULT '{}',
    quarantined boolean       NOT NULL DEFAULT false,
    -- Reading name to value, as in the record.
    readings    jsonb         NOT NULL DEFAULT '{}',
    location    text          NOT NULL DEFAULT '',
    region      text          NOT NULL DEFAULT '',
    project     text          NOT NULL DEFAULT '',
    -- Where the reading's record is: the node's durable log, shard, offset.
    node        text          NOT NULL,
    shard       int           NOT NULL,
    log_offset  bigint        NOT NULL,
    -- When this row was written (the first delivery; a redelivery writes nothing).
    created_at  timestamptz   NOT NULL DEFAULT now(),
    PRIMARY KEY (device_id, seq)
);

-- "What was flagged lately" (and, filtered, in a region), "this device's alerts by time",
-- "what was flagged at this location since" (the peers detector's groups). The primary
-- key serves lookups by device and sequence.
CREATE INDEX alerts_received ON alerts (received);
CREATE INDEX alerts_device_received ON alerts (device_id, received);
CREATE INDEX alerts_location_received ON alerts (location, received);
-- Detectors: `WHERE detectors @> '{peers}'`.
CREATE INDEX alerts_detectors ON alerts USING gin (detectors);

ALTER TABLE device_stats
    ADD COLUMN flagged     bigint NOT NULL DEFAULT 0,
    ADD COLUMN quarantined bigint NOT NULL DEFAULT 0;
