-- Public addresses assigned to apps (Fly's /apps/{app}/ip_assignments).
CREATE TABLE ip_assignments (
    ip TEXT NOT NULL,
    app_name TEXT NOT NULL,
    region TEXT NOT NULL,
    service_name TEXT NOT NULL DEFAULT '',
    shared INTEGER NOT NULL DEFAULT 0,
    created_at TEXT NOT NULL,
    PRIMARY KEY (ip, app_name)
);
CREATE INDEX ip_assignments_app ON ip_assignments(app_name);
