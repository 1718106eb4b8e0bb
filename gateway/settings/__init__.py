"""The configuration's models by concern: the departments and their tables
(:mod:`.departments`), who may call and how (:mod:`.access`), what a request may take and how
much runs at once (:mod:`.limits`). :mod:`gateway.config` puts them together into one file's
model and reads it."""
