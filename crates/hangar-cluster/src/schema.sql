-- Hangar's shared state (run under an advisory lock, idempotent). Each host
-- stays the authority for what it runs; this holds what hosts share.
CREATE TABLE IF NOT EXISTS hosts (
    id TEXT PRIMARY KEY,
    region TEXT NOT NULL,
    api_url TEXT NOT NULL,
    cpus INTEGER NOT NULL,
    memory_mb BIGINT NOT NULL,
    admin_token_hash TEXT NOT NULL,
    state TEXT NOT NULL DEFAULT 'up',
    epoch BIGINT NOT NULL DEFAULT 1,
    drained BOOLEAN NOT NULL DEFAULT FALSE,
    heartbeat_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    joined_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
-- The catalogue's change log, in commit order (appends hold a table lock).
CREATE TABLE IF NOT EXISTS changes (
    rev BIGSERIAL PRIMARY KEY,
    origin TEXT NOT NULL,
    body TEXT NOT NULL,
    at TIMESTAMPTZ NOT NULL DEFAULT now()
);
-- App names are unique across the cluster.
CREATE TABLE IF NOT EXISTS apps (
    name TEXT PRIMARY KEY,
    body TEXT NOT NULL
);
-- Which host runs each machine; written only by that host.
CREATE TABLE IF NOT EXISTS machines (
    id TEXT PRIMARY KEY,
    app TEXT NOT NULL,
    host TEXT NOT NULL,
    region TEXT NOT NULL,
    state TEXT NOT NULL,
    cpus INTEGER NOT NULL,
    memory_mb BIGINT NOT NULL,
    updated_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS machines_by_host ON machines (host);
CREATE INDEX IF NOT EXISTS machines_by_app ON machines (app);
-- The id of each host's secrets key: hosts share secrets sealed with one key.
ALTER TABLE hosts ADD COLUMN IF NOT EXISTS secrets_key_id TEXT NOT NULL DEFAULT '';
-- The machines each machine stands by for (comma-separated ids).
ALTER TABLE machines ADD COLUMN IF NOT EXISTS standbys TEXT NOT NULL DEFAULT '';
-- Where each host's proxy takes plain HTTP from the other hosts' proxies.
ALTER TABLE hosts ADD COLUMN IF NOT EXISTS proxy_addr TEXT NOT NULL DEFAULT '';
-- The public ports each machine serves over HTTP (`80-80,443-443`).
ALTER TABLE machines ADD COLUMN IF NOT EXISTS http_ports TEXT NOT NULL DEFAULT '';
-- The directory is followed by revision: every write of a machine row takes
-- the next one (writes hold an advisory lock, so revisions commit in order),
-- and a machine leaves as a `gone` row (purged after ten minutes).
CREATE SEQUENCE IF NOT EXISTS machine_revs;
ALTER TABLE machines ADD COLUMN IF NOT EXISTS rev BIGINT NOT NULL DEFAULT 0;
CREATE INDEX IF NOT EXISTS machines_by_rev ON machines (rev);
-- The installation's id (the second group of every 6PN address), made by
-- the first host and taken by every host that joins.
CREATE TABLE IF NOT EXISTS settings (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
-- Each host's number in 6PN addresses (`fdaa:<inst>:<net>:<host>::/64`),
-- kept for good once given.
CREATE TABLE IF NOT EXISTS host_indexes (
    host TEXT PRIMARY KEY,
    idx INTEGER NOT NULL UNIQUE
);
-- Networks by name, with one id on every host (the third group).
CREATE TABLE IF NOT EXISTS networks (
    name TEXT PRIMARY KEY,
    idx INTEGER NOT NULL UNIQUE
);
-- Each host's end of the mesh: its WireGuard public key and the UDP address
-- the others reach it at.
ALTER TABLE hosts ADD COLUMN IF NOT EXISTS mesh_key TEXT NOT NULL DEFAULT '';
ALTER TABLE hosts ADD COLUMN IF NOT EXISTS mesh_endpoint TEXT NOT NULL DEFAULT '';
-- What the internal DNS of other hosts answers for each machine.
ALTER TABLE machines ADD COLUMN IF NOT EXISTS private_ip TEXT NOT NULL DEFAULT '';
ALTER TABLE machines ADD COLUMN IF NOT EXISTS process_group TEXT NOT NULL DEFAULT '';
-- Which host holds each volume (a machine with a volume runs where it is);
-- rows written only by that host.
CREATE TABLE IF NOT EXISTS volumes (
    id TEXT PRIMARY KEY,
    app TEXT NOT NULL,
    host TEXT NOT NULL,
    region TEXT NOT NULL,
    size_gb BIGINT NOT NULL,
    state TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS volumes_by_host ON volumes (host);
-- Every public port of each machine's services with protocol and handlers
-- (`tcp:5432-5432:;udp:53-53:`): every host's proxy listens on an app's
-- dedicated addresses for the ports of its machines on any host.
ALTER TABLE machines ADD COLUMN IF NOT EXISTS ports TEXT NOT NULL DEFAULT '';
-- Dedicated addresses are unique across the cluster: the first host to
-- record one wins it.
CREATE TABLE IF NOT EXISTS ips (
    ip TEXT PRIMARY KEY,
    app TEXT NOT NULL,
    body TEXT NOT NULL
);
-- Every app's releases, each as its latest change (the host that ran it
-- and the release); hosts keep copies from the change log.
CREATE TABLE IF NOT EXISTS releases (
    id TEXT PRIMARY KEY,
    app TEXT NOT NULL,
    body TEXT NOT NULL
);
