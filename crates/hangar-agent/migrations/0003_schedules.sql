-- When a scheduled machine's next run is due (Unix ms); NULL until its
-- schedule's cycle begins with the first run.
ALTER TABLE machines ADD COLUMN schedule_next_ms INTEGER;
