-- Apps, machines, their config versions and events.
CREATE TABLE apps (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    org_slug TEXT NOT NULL,
    network TEXT NOT NULL,
    status TEXT NOT NULL,
    internal_numeric_id INTEGER NOT NULL,
    created_at TEXT NOT NULL
);

CREATE TABLE machines (
    id TEXT PRIMARY KEY,
    app_name TEXT NOT NULL REFERENCES apps(name),
    name TEXT NOT NULL,
    region TEXT NOT NULL,
    state TEXT NOT NULL,
    restart_count INTEGER NOT NULL DEFAULT 0,
    launch INTEGER NOT NULL DEFAULT 0,
    instance_id TEXT NOT NULL,
    config TEXT NOT NULL,
    image_ref TEXT,
    private_ip TEXT NOT NULL DEFAULT '',
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL
);
-- Names are unique among an app's machines that still exist.
CREATE UNIQUE INDEX machines_app_name ON machines(app_name, name) WHERE state != 'destroyed';
CREATE INDEX machines_state ON machines(state);

CREATE TABLE machine_versions (
    machine_id TEXT NOT NULL REFERENCES machines(id) ON DELETE CASCADE,
    version TEXT NOT NULL,
    config TEXT NOT NULL,
    created_at TEXT NOT NULL,
    PRIMARY KEY (machine_id, version)
);

CREATE TABLE machine_events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    machine_id TEXT NOT NULL REFERENCES machines(id) ON DELETE CASCADE,
    type TEXT NOT NULL,
    status TEXT NOT NULL,
    source TEXT NOT NULL,
    timestamp INTEGER NOT NULL,
    request TEXT
);
CREATE INDEX machine_events_machine ON machine_events(machine_id, seq);
