-- App secrets, sealed with the installation's secrets key (XChaCha20-Poly1305,
-- bound to app and name); only names, digests and times are readable here.
ALTER TABLE apps ADD COLUMN secrets_version INTEGER NOT NULL DEFAULT 0;
CREATE TABLE secrets (
    app_name TEXT NOT NULL,
    name TEXT NOT NULL,
    sealed BLOB NOT NULL,
    digest TEXT NOT NULL,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    PRIMARY KEY (app_name, name)
);
