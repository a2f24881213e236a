-- How many addresses each block holds, kept by triggers on the
-- allocations, so that a create finds the first block with room without
-- reading every address of the network (an O(machines) read per create).
ALTER TABLE network_blocks ADD COLUMN used INTEGER NOT NULL DEFAULT 0;
UPDATE network_blocks SET used =
    (SELECT COUNT(*) FROM ip_allocations a WHERE a.block = network_blocks.block);

CREATE TRIGGER ip_allocations_used_insert AFTER INSERT ON ip_allocations
BEGIN
    UPDATE network_blocks SET used = used + 1 WHERE block = NEW.block;
END;

CREATE TRIGGER ip_allocations_used_delete AFTER DELETE ON ip_allocations
BEGIN
    UPDATE network_blocks SET used = used - 1 WHERE block = OLD.block;
END;

CREATE TRIGGER ip_allocations_used_move AFTER UPDATE OF block ON ip_allocations
    WHEN NEW.block != OLD.block
BEGIN
    UPDATE network_blocks SET used = used - 1 WHERE block = OLD.block;
    UPDATE network_blocks SET used = used + 1 WHERE block = NEW.block;
END;
