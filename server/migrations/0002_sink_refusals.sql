-- Records PostgreSQL refused for good, per node, shard and log offset. Written in the
-- same transaction as the cursor that passes them, so a replay that skips an applied
-- range can report its refusals to the shard again: a refusal is never lost between the
-- commit and the report, at the price of being reported twice after a crash.
CREATE TABLE sink_refusals (
    node       text   NOT NULL,
    shard      int    NOT NULL,
    log_offset bigint NOT NULL,
    reason     text   NOT NULL,
    detail     text   NOT NULL,
    refused_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (node, shard, log_offset)
);
