-- Cluster mode (`hangard --cluster`): what this host changed in the
-- cluster-wide catalogue (apps, tokens), written in the same transaction as
-- the change and sent to the shared database afterwards, so a crash between
-- the two loses nothing; and how far this host has applied the cluster's
-- change log. Unused on a single host.
CREATE TABLE cluster_outbox (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    kind TEXT NOT NULL,
    body TEXT NOT NULL
);
CREATE TABLE cluster_state (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
