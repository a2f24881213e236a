-- Releases other hosts of a cluster ran, copied here from the cluster's
-- catalogue so every host lists them: `host` names the host that ran one
-- (NULL: this host, which alone resumes or cancels it).
ALTER TABLE releases ADD COLUMN host TEXT;
