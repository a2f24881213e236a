-- A machine's revision: every change to its row or to its events bumps
-- it, so a reader that keeps renderings of machines tells a current one
-- from a stale one by this number alone, whoever made the change.
ALTER TABLE machines ADD COLUMN rev INTEGER NOT NULL DEFAULT 0;

-- The nested UPDATE changes `rev`, so this trigger does not fire again for
-- it (nor would it with recursive triggers on).
CREATE TRIGGER machines_rev_update AFTER UPDATE ON machines
    WHEN NEW.rev = OLD.rev
BEGIN
    UPDATE machines SET rev = OLD.rev + 1 WHERE id = NEW.id;
END;

CREATE TRIGGER machines_rev_event AFTER INSERT ON machine_events
BEGIN
    UPDATE machines SET rev = rev + 1 WHERE id = NEW.machine_id;
END;

-- An app's machines in listing order, without a sort.
CREATE INDEX machines_app_created ON machines(app_name, created_at, id);
