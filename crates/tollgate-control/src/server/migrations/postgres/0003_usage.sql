-- Usage and audit events uploaded by managed gateways (PostgreSQL twin of sqlite/0003_usage.sql).
-- Idempotency: one row per (gateway, seq) batch, inserted in the same transaction as the
-- batch's usage; a batch sent again finds its row and adds nothing.
CREATE TABLE usage_batches (
    gateway_id     TEXT NOT NULL,
    seq            BIGINT NOT NULL,
    received_at_ms BIGINT NOT NULL,
    row_count      BIGINT NOT NULL,
    event_count    BIGINT NOT NULL,
    PRIMARY KEY (gateway_id, seq)
);
-- Per minute and key; rows of one key sent in several batches are added together.
CREATE TABLE usage_minutes (
    minute         BIGINT NOT NULL,           -- unix s, multiple of 60
    group_name     TEXT NOT NULL,
    gateway_id     TEXT NOT NULL,
    api            TEXT NOT NULL,
    consumer       TEXT NOT NULL,
    endpoint       TEXT NOT NULL,
    status_class   TEXT NOT NULL,
    requests       BIGINT NOT NULL,
    errors         BIGINT NOT NULL,
    limited        BIGINT NOT NULL,
    bytes_in       BIGINT NOT NULL,
    bytes_out      BIGINT NOT NULL,
    cost           BIGINT NOT NULL,
    latency_ms_sum BIGINT NOT NULL,
    -- latency buckets (ms upper bounds): 5 10 25 50 100 250 500 1000 2500 5000 10000 +inf
    b0 BIGINT NOT NULL, b1 BIGINT NOT NULL, b2 BIGINT NOT NULL, b3 BIGINT NOT NULL,
    b4 BIGINT NOT NULL, b5 BIGINT NOT NULL, b6 BIGINT NOT NULL, b7 BIGINT NOT NULL,
    b8 BIGINT NOT NULL, b9 BIGINT NOT NULL, b10 BIGINT NOT NULL, b11 BIGINT NOT NULL,
    PRIMARY KEY (gateway_id, minute, api, consumer, endpoint, status_class)
);
CREATE INDEX usage_minutes_by_minute ON usage_minutes (minute, group_name);
CREATE TABLE usage_events (
    id          BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    minute      BIGINT NOT NULL,
    group_name  TEXT NOT NULL,
    gateway_id  TEXT NOT NULL,
    kind        TEXT NOT NULL,                  -- deny | limit | dlp | report | config_applied
    api         TEXT NOT NULL,
    consumer    TEXT NOT NULL,
    reason      TEXT NOT NULL,
    count       BIGINT NOT NULL,
    first_at_ms BIGINT NOT NULL,
    last_at_ms  BIGINT NOT NULL,
    UNIQUE (gateway_id, minute, kind, api, consumer, reason)
);
CREATE INDEX usage_events_by_time ON usage_events (last_at_ms, group_name);
-- Quota usage against each limit: the highest `used` a gateway reported for a limit key in a
-- minute (a later report of the same minute keeps the maximum).
CREATE TABLE usage_limits (
    minute      BIGINT NOT NULL,
    group_name  TEXT NOT NULL,
    gateway_id  TEXT NOT NULL,
    api         TEXT NOT NULL,
    limit_name  TEXT NOT NULL,
    limit_key   TEXT NOT NULL,
    scope       TEXT NOT NULL,
    used        BIGINT NOT NULL,
    quota       BIGINT NOT NULL,
    window_secs BIGINT NOT NULL,
    PRIMARY KEY (gateway_id, minute, api, limit_name, limit_key)
);
CREATE INDEX usage_limits_by_minute ON usage_limits (minute, group_name);
-- Alert rules on stored usage (server/alerts.rs): the rule as JSON, plus its evaluation state.
CREATE TABLE alert_rules (
    name              TEXT PRIMARY KEY,
    group_name        TEXT,                     -- NULL = every group
    spec              TEXT NOT NULL,            -- JSON AlertRule
    firing            BIGINT NOT NULL DEFAULT 0,
    last_value        TEXT,                     -- JSON number of the last evaluation
    last_notified_ms  BIGINT NOT NULL DEFAULT 0,
    last_evaluated_ms BIGINT NOT NULL DEFAULT 0,
    last_error        TEXT,                     -- last webhook failure
    action_state      TEXT,                     -- JSON: the automated action applied, to revert it
    created_by        TEXT NOT NULL,
    created_at_ms     BIGINT NOT NULL
);
