-- The first schema: the device registry (the source of truth when `postgres.registry` is
-- on), per-device statistics, the dead-letter index, fraud alerts and the sink's cursors.
-- Applied by ingestd at start (egress/postgres.rs, `migrate`), inside one transaction.

-- Who may connect, with which ed25519 key, and what every accepted reading is enriched
-- with. Rows are checked again by the server when loaded (docs/REGISTRY.md): a row the
-- server refuses is skipped with a warning, never served.
CREATE TABLE devices (
    device_id   text PRIMARY KEY,
    public_key  text NOT NULL CHECK (public_key ~ '^[0-9A-Fa-f]{64}$'),
    status      text NOT NULL CHECK (status IN ('active', 'revoked')),
    location    text NOT NULL DEFAULT '',
    region      text NOT NULL DEFAULT '',
    project     text NOT NULL DEFAULT '',
    sensor_type text NOT NULL DEFAULT '',
    updated_at  timestamptz NOT NULL DEFAULT now()
);

-- A hand-written UPDATE moves updated_at too.
CREATE FUNCTION ingestd_devices_touch() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.updated_at := now();
    RETURN NEW;
END
$$;

CREATE TRIGGER devices_touch BEFORE UPDATE ON devices
    FOR EACH ROW EXECUTE FUNCTION ingestd_devices_touch();

-- Every change is pushed to the nodes (LISTEN ingestd_registry) when it commits, so a
-- revoked device is disconnected everywhere without a restart. The payload is the id.
CREATE FUNCTION ingestd_registry_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        PERFORM pg_notify('ingestd_registry', OLD.device_id);
    ELSE
        PERFORM pg_notify('ingestd_registry', NEW.device_id);
        IF TG_OP = 'UPDATE' AND OLD.device_id <> NEW.device_id THEN
            PERFORM pg_notify('ingestd_registry', OLD.device_id);
        END IF;
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER devices_notify AFTER INSERT OR UPDATE OR DELETE ON devices
    FOR EACH ROW EXECUTE FUNCTION ingestd_registry_notify();

-- Counters per device, kept exact by the sink's cursors (each log record counted once).
-- last_seen: newest server receive time of any record (readings and dead letters: the
-- device was connected either way); last_seq: the sequence of its newest reading (a dead
-- letter's sequence is unverified and does not move it).
CREATE TABLE device_stats (
    device_id    text PRIMARY KEY,
    last_seen    timestamptz,
    last_seq     bigint,
    readings     bigint NOT NULL DEFAULT 0,
    dead_letters bigint NOT NULL DEFAULT 0,
    updated_at   timestamptz NOT NULL DEFAULT now()
);

-- An index of the refused messages; the payloads themselves stay in the durable log,
-- found by (node, shard, log_offset).
CREATE TABLE dead_letters (
    node        text   NOT NULL,
    shard       int    NOT NULL,
    log_offset  bigint NOT NULL,
    device_id   text   NOT NULL,
    seq         bigint,
    reason      text   NOT NULL,
    detail      text   NOT NULL,
    received_at timestamptz NOT NULL,
    PRIMARY KEY (node, shard, log_offset)
);

CREATE INDEX dead_letters_device ON dead_letters (device_id, received_at);
CREATE INDEX dead_letters_reason ON dead_letters (reason);

-- Readings the fraud scorer flagged, one per (device, seq) however often replayed.
CREATE TABLE fraud_alerts (
    id         bigserial PRIMARY KEY,
    node       text   NOT NULL,
    device_id  text   NOT NULL,
    seq        bigint NOT NULL,
    score      real   NOT NULL,
    reasons    text[] NOT NULL DEFAULT '{}',
    created_at timestamptz NOT NULL DEFAULT now(),
    UNIQUE (device_id, seq)
);

-- Per node and shard: every record of that shard's durable log below next_offset is
-- applied. Moved in the same transaction as the rows it covers, so a replay after a
-- restart or an outage never counts a record twice.
CREATE TABLE sink_cursors (
    node        text   NOT NULL,
    shard       int    NOT NULL,
    next_offset bigint NOT NULL,
    PRIMARY KEY (node, shard)
);
