-- Tokens are bound to their app's id, not its name: a token of a deleted app
-- never reaches an app created later under the same name. Tokens made before
-- the app that now holds their app's name are dropped.
ALTER TABLE tokens ADD COLUMN app_id TEXT;
UPDATE tokens SET app_id = (SELECT id FROM apps WHERE apps.name = tokens.app_name);
DELETE FROM tokens WHERE app_id IS NULL
    OR created_at < (SELECT created_at FROM apps WHERE apps.id = tokens.app_id);
-- A name to tell tokens apart in listings, and the token that minted it.
ALTER TABLE tokens ADD COLUMN name TEXT NOT NULL DEFAULT '';
ALTER TABLE tokens ADD COLUMN minted_by TEXT;
CREATE INDEX tokens_app ON tokens(app_id);
