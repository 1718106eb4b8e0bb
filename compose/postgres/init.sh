#!/bin/sh
# Run once by the image's entrypoint, on an empty data directory (as POSTGRES_USER, citygate,
# the loader's user). It makes:
# - the departments' databases, owned by citygate, with the collation the loader would give
#   them (`citygate datagen` fills them);
# - citygate_reader, the gateways' user: CONNECT and SELECT on those databases and nothing
#   else, also on the tables the loader creates later (docs/operations.md, "A read-only store
#   user");
# - Keycloak's own database and user (Keycloak runs `start` on it, not an in-memory H2).
set -eu
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname postgres <<SQL
CREATE ROLE citygate_reader LOGIN PASSWORD '${CITYGATE_READER_PASSWORD}';
CREATE ROLE keycloak LOGIN PASSWORD '${KEYCLOAK_DB_PASSWORD}';
CREATE DATABASE keycloak OWNER keycloak;
SQL
for db in public_security health transport; do
  psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname postgres <<SQL
CREATE DATABASE $db TEMPLATE template0 ENCODING 'UTF8' LC_COLLATE 'C' LC_CTYPE 'C' OWNER citygate;
REVOKE ALL ON DATABASE $db FROM PUBLIC;
GRANT CONNECT ON DATABASE $db TO citygate_reader;
SQL
  psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$db" <<SQL
REVOKE CREATE ON SCHEMA public FROM PUBLIC;
GRANT USAGE ON SCHEMA public TO citygate_reader;
GRANT SELECT ON ALL TABLES IN SCHEMA public TO citygate_reader;
ALTER DEFAULT PRIVILEGES FOR ROLE citygate IN SCHEMA public GRANT SELECT ON TABLES TO citygate_reader;
SQL
done
