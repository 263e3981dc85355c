-- Where a generation came from when a fleet rendered it (issue 20): the fleet, its revision, the
-- parameter values used and, for a signed fleet, the signed template; served with the manifest so
-- that an agent with trusted keys can check it. NULL for a manifest an operator PUT directly.
ALTER TABLE manifests ADD COLUMN fleet jsonb;
