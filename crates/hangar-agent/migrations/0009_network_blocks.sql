-- Networks grow by blocks: a /24 of the installation's IPv4 range (and a
-- bridge) for every 253 machines. A network's id no longer names its
-- address block; existing networks keep their id and get their old /24 as
-- their first block, so existing IPv4 addresses stay.
CREATE TABLE settings (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE network_blocks (
    block INTEGER PRIMARY KEY,
    network TEXT NOT NULL
);
INSERT INTO network_blocks (block, network) SELECT idx, name FROM networks;
CREATE TABLE ip_allocations_new (
    block INTEGER NOT NULL,
    host INTEGER NOT NULL,
    network TEXT NOT NULL,
    machine_id TEXT NOT NULL UNIQUE,
    PRIMARY KEY (block, host)
);
INSERT INTO ip_allocations_new (block, host, network, machine_id)
    SELECT n.idx, a.host, a.network, a.machine_id
    FROM ip_allocations a JOIN networks n ON n.name = a.network;
DROP TABLE ip_allocations;
ALTER TABLE ip_allocations_new RENAME TO ip_allocations;
CREATE INDEX ip_allocations_network ON ip_allocations(network);
