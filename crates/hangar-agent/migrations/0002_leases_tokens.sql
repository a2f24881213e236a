-- Cordoned machines are left out of proxy rotation.
ALTER TABLE machines ADD COLUMN cordoned INTEGER NOT NULL DEFAULT 0;
-- Millisecond update time, for org listings ordered and paged by it.
ALTER TABLE machines ADD COLUMN updated_at_ms INTEGER NOT NULL DEFAULT 0;
CREATE INDEX machines_updated ON machines(updated_at_ms, id);

-- At most one lease per machine.
CREATE TABLE leases (
    machine_id TEXT PRIMARY KEY REFERENCES machines(id) ON DELETE CASCADE,
    nonce TEXT NOT NULL,
    owner TEXT NOT NULL,
    description TEXT NOT NULL,
    expires_at INTEGER NOT NULL,
    version TEXT NOT NULL
);

-- Tokens beside the admin token: app-scoped deploy tokens, stored hashed.
CREATE TABLE tokens (
    id TEXT PRIMARY KEY,
    hash TEXT NOT NULL UNIQUE,
    app_name TEXT NOT NULL,
    created_at TEXT NOT NULL,
    expires_at INTEGER
);
