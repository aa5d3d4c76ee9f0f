-- Usage and audit events uploaded by managed gateways (see server/usage.rs).
-- Idempotency: one row per (gateway, seq) batch, inserted in the same transaction as the
-- batch's usage; a batch sent again finds its row and adds nothing.
CREATE TABLE usage_batches (
    gateway_id     TEXT NOT NULL,
    seq            INTEGER NOT NULL,
    received_at_ms INTEGER NOT NULL,
    row_count      INTEGER NOT NULL,
    event_count    INTEGER NOT NULL,
    PRIMARY KEY (gateway_id, seq)
);
-- Per minute and key; rows of one key sent in several batches are added together.
CREATE TABLE usage_minutes (
    minute         INTEGER NOT NULL,           -- unix s, multiple of 60
    group_name     TEXT NOT NULL,
    gateway_id     TEXT NOT NULL,
    api            TEXT NOT NULL,
    consumer       TEXT NOT NULL,
    endpoint       TEXT NOT NULL,
    status_class   TEXT NOT NULL,
    requests       INTEGER NOT NULL,
    errors         INTEGER NOT NULL,
    limited        INTEGER NOT NULL,
    bytes_in       INTEGER NOT NULL,
    bytes_out      INTEGER NOT NULL,
    cost           INTEGER NOT NULL,
    latency_ms_sum INTEGER NOT NULL,
    -- latency buckets (ms upper bounds): 5 10 25 50 100 250 500 1000 2500 5000 10000 +inf
    b0 INTEGER NOT NULL, b1 INTEGER NOT NULL, b2 INTEGER NOT NULL, b3 INTEGER NOT NULL,
    b4 INTEGER NOT NULL, b5 INTEGER NOT NULL, b6 INTEGER NOT NULL, b7 INTEGER NOT NULL,
    b8 INTEGER NOT NULL, b9 INTEGER NOT NULL, b10 INTEGER NOT NULL, b11 INTEGER NOT NULL,
    PRIMARY KEY (gateway_id, minute, api, consumer, endpoint, status_class)
);
CREATE INDEX usage_minutes_by_minute ON usage_minutes (minute, group_name);
CREATE TABLE usage_events (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    minute      INTEGER NOT NULL,
    group_name  TEXT NOT NULL,
    gateway_id  TEXT NOT NULL,
    kind        TEXT NOT NULL,                  -- deny | limit | dlp | report | config_applied
    api         TEXT NOT NULL,
    consumer    TEXT NOT NULL,
    reason      TEXT NOT NULL,
    count       INTEGER NOT NULL,
    first_at_ms INTEGER NOT NULL,
    last_at_ms  INTEGER NOT NULL,
    UNIQUE (gateway_id, minute, kind, api, consumer, reason)
);
CREATE INDEX usage_events_by_time ON usage_events (last_at_ms, group_name);
-- Quota usage against each limit: the highest `used` a gateway reported for a limit key in a
-- minute (a later report of the same minute keeps the maximum).
CREATE TABLE usage_limits (
    minute      INTEGER NOT NULL,
    group_name  TEXT NOT NULL,
    gateway_id  TEXT NOT NULL,
    api         TEXT NOT NULL,
    limit_name  TEXT NOT NULL,
    limit_key   TEXT NOT NULL,
    scope       TEXT NOT NULL,
    used        INTEGER NOT NULL,
    quota       INTEGER NOT NULL,
    window_secs INTEGER NOT NULL,
    PRIMARY KEY (gateway_id, minute, api, limit_name, limit_key)
);
CREATE INDEX usage_limits_by_minute ON usage_limits (minute, group_name);
-- Alert rules on stored usage (server/alerts.rs): the rule as JSON, plus its evaluation state.
CREATE TABLE alert_rules (
    name              TEXT PRIMARY KEY,
    group_name        TEXT,                     -- NULL = every group
    spec              TEXT NOT NULL,            -- JSON AlertRule
    firing            INTEGER NOT NULL DEFAULT 0,
    last_value        TEXT,                     -- JSON number of the last evaluation
    last_notified_ms  INTEGER NOT NULL DEFAULT 0,
    last_evaluated_ms INTEGER NOT NULL DEFAULT 0,
    last_error        TEXT,                     -- last webhook failure
    action_state      TEXT,                     -- JSON: the automated action applied, to revert it
    created_by        TEXT NOT NULL,
    created_at_ms     INTEGER NOT NULL
);
