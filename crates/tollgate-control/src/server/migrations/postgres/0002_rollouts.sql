-- Rollouts (canary, promote, rollback), group-scoped viewer tokens, audit records per group
-- (PostgreSQL twin of migrations/sqlite/0002_rollouts.sql).
CREATE TABLE rollouts (
    id               BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    group_name       TEXT NOT NULL REFERENCES groups(name),
    version          BIGINT NOT NULL,          -- the version being rolled out
    base_version     BIGINT NOT NULL,          -- the group's version when it started
    canary_percent   BIGINT NOT NULL,          -- 0-100 share of the candidates (stable hash of the id)
    canary_labels    TEXT NOT NULL,            -- JSON object; {} = every gateway of the group is a candidate
    state            TEXT NOT NULL CHECK (state IN ('canary', 'promoted', 'rolled_back')),
    rollback_version BIGINT,                   -- new version carrying base_version's config
    started_by       TEXT NOT NULL,
    started_at_ms    BIGINT NOT NULL,
    updated_by       TEXT NOT NULL,
    updated_at_ms    BIGINT NOT NULL
);
CREATE INDEX rollouts_group ON rollouts (group_name, id);
ALTER TABLE operator_tokens ADD COLUMN group_scope TEXT REFERENCES groups(name);
ALTER TABLE audit ADD COLUMN group_name TEXT;
UPDATE audit SET group_name = (SELECT g.group_name FROM gateways g WHERE g.id = audit.target)
    WHERE action IN ('gateway.enroll', 'config.applied', 'gateway.revoke');
UPDATE audit SET group_name = target
    WHERE action IN ('group.create', 'enrollment_token.create', 'config.publish');
CREATE INDEX audit_group ON audit (group_name, id);
