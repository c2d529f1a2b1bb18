#!/bin/bash
# The task API's three databases on the MariaDB primary (docker-compose.yml
# mounts this into /docker-entrypoint-initdb.d; the replica gets it all by
# replication). The users database and two shards; schema.sql in each.
set -euo pipefail
mariadb=(mariadb --user=root --password="${MARIADB_ROOT_PASSWORD}")
for database in taskapi_users taskapi_shard0 taskapi_shard1; do
    "${mariadb[@]}" -e "CREATE DATABASE IF NOT EXISTS ${database}"
    "${mariadb[@]}" "${database}" < /schema/schema.sql
done
"${mariadb[@]}" -e "GRANT ALL PRIVILEGES ON \`taskapi\\_%\`.* TO '${MARIADB_USER}'@'%';
                    GRANT REPLICA MONITOR ON *.* TO '${MARIADB_USER}'@'%';"
