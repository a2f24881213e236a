-- Volumes: sparse images under <data-dir>/volumes; an encrypted volume's
-- key is sealed with the secrets key.
CREATE TABLE volumes (
    id TEXT PRIMARY KEY,
    app_name TEXT NOT NULL,
    name TEXT NOT NULL,
    state TEXT NOT NULL,
    size_gb INTEGER NOT NULL,
    region TEXT NOT NULL,
    zone TEXT NOT NULL,
    encrypted INTEGER NOT NULL,
    fstype TEXT NOT NULL,
    key_sealed BLOB,
    attached_machine_id TEXT,
    snapshot_retention INTEGER NOT NULL,
    auto_backup_enabled INTEGER NOT NULL,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL
);
CREATE INDEX volumes_app ON volumes(app_name, state);
-- A volume is bound to at most one machine.
CREATE UNIQUE INDEX volumes_machine ON volumes(attached_machine_id) WHERE attached_machine_id IS NOT NULL;

CREATE TABLE volume_snapshots (
    id TEXT PRIMARY KEY,
    volume_id TEXT NOT NULL,
    app_name TEXT NOT NULL,
    size INTEGER NOT NULL,
    volume_size INTEGER NOT NULL,
    digest TEXT NOT NULL,
    status TEXT NOT NULL,
    retention_days INTEGER NOT NULL,
    fstype TEXT NOT NULL,
    encrypted INTEGER NOT NULL,
    key_sealed BLOB,
    created_at TEXT NOT NULL,
    created_at_ms INTEGER NOT NULL
);
CREATE INDEX volume_snapshots_volume ON volume_snapshots(volume_id);
