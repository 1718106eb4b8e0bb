#!/bin/sh
# The gateways' own MariaDB user: it reads the departments' databases and can change nothing
# (docs/operations.md, "A read-only store user"). Run once by the image's entrypoint, on an
# empty data directory; the password comes from the environment.
set -eu
mariadb -uroot -p"$MARIADB_ROOT_PASSWORD" <<SQL
CREATE USER 'citygate_reader'@'%' IDENTIFIED BY '${CITYGATE_READER_PASSWORD}';
GRANT SELECT, SHOW VIEW ON \`market_regulation\`.* TO 'citygate_reader'@'%';
GRANT SELECT, SHOW VIEW ON \`environment\`.* TO 'citygate_reader'@'%';
GRANT SELECT, SHOW VIEW ON \`human_resources\`.* TO 'citygate_reader'@'%';
SQL
