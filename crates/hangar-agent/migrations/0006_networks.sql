-- Private networks (one per app `network` name) and machine addresses.
CREATE TABLE networks (
    name TEXT PRIMARY KEY,
    idx INTEGER NOT NULL UNIQUE
);
CREATE TABLE ip_allocations (
    network TEXT NOT NULL,
    host INTEGER NOT NULL,
    machine_id TEXT NOT NULL UNIQUE,
    PRIMARY KEY (network, host)
);
