-- Releases: each deploy (or secrets change, restart, rollback) of an app, run
-- by hangard. At most one unfinished release per app (checked when one is
-- made, in the same transaction). They die with their app.
CREATE TABLE releases (
    id TEXT PRIMARY KEY,
    app_name TEXT NOT NULL,
    version INTEGER NOT NULL,
    status TEXT NOT NULL,
    reason TEXT NOT NULL,
    strategy TEXT NOT NULL,
    description TEXT NOT NULL DEFAULT '',
    image_ref TEXT NOT NULL,
    image_digest TEXT NOT NULL DEFAULT '',
    definition TEXT NOT NULL,
    options TEXT NOT NULL,
    secrets_version INTEGER NOT NULL DEFAULT 0,
    machines TEXT NOT NULL DEFAULT '[]',
    user TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    started_at INTEGER,
    finished_at INTEGER,
    error TEXT,
    rollback_of TEXT,
    UNIQUE (app_name, version)
);
CREATE INDEX releases_unfinished ON releases(status)
    WHERE status IN ('pending', 'running', 'rolling_back');
-- A release's progress, in order.
CREATE TABLE release_events (
    release_id TEXT NOT NULL REFERENCES releases(id) ON DELETE CASCADE,
    seq INTEGER NOT NULL,
    at INTEGER NOT NULL,
    body TEXT NOT NULL,
    PRIMARY KEY (release_id, seq)
);
