-- Fleet, configuration versions and audit: the first control-plane schema (PostgreSQL twin of
-- migrations/sqlite/0001_init.sql; integers are BIGINT so both read back as i64).
CREATE TABLE groups (
    name             TEXT PRIMARY KEY,
    labels           TEXT NOT NULL,            -- JSON object
    created_at       BIGINT NOT NULL,          -- unix s
    assigned_version BIGINT NOT NULL DEFAULT 0
);
CREATE TABLE operator_tokens (
    name       TEXT PRIMARY KEY,
    role       TEXT NOT NULL CHECK (role IN ('admin', 'viewer')),
    token_hash TEXT NOT NULL UNIQUE,           -- hex sha256 of the bearer token
    created_at BIGINT NOT NULL
);
CREATE TABLE enrollment_tokens (
    token_hash TEXT PRIMARY KEY,
    group_name TEXT NOT NULL REFERENCES groups(name),
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    created_by TEXT NOT NULL,
    used_at    BIGINT,                          -- set once: the token is one-time
    used_by    TEXT
);
CREATE TABLE gateways (
    id              TEXT PRIMARY KEY,
    name            TEXT NOT NULL,
    group_name      TEXT NOT NULL REFERENCES groups(name),
    labels          TEXT NOT NULL,
    credential_hash TEXT NOT NULL UNIQUE,
    enrolled_at     BIGINT NOT NULL,
    revoked         BIGINT NOT NULL DEFAULT 0,
    last_seen       BIGINT NOT NULL DEFAULT 0,
    applied_version BIGINT NOT NULL DEFAULT 0,
    healthy         BIGINT NOT NULL DEFAULT 0,
    last_error      TEXT,
    started_at      BIGINT NOT NULL DEFAULT 0,
    applied_at_ms   BIGINT NOT NULL DEFAULT 0
);
CREATE TABLE config_versions (
    group_name    TEXT NOT NULL REFERENCES groups(name),
    version       BIGINT NOT NULL,
    yaml          TEXT NOT NULL,
    sha256        TEXT NOT NULL,
    created_at_ms BIGINT NOT NULL,
    created_by    TEXT NOT NULL,
    signed_bundle TEXT NOT NULL,               -- JSON SignedBundle served to gateways
    PRIMARY KEY (group_name, version)
);
CREATE TABLE audit (
    id     BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at_ms  BIGINT NOT NULL,
    actor  TEXT NOT NULL,
    action TEXT NOT NULL,
    target TEXT NOT NULL,
    detail TEXT NOT NULL                        -- JSON
);
