-- A SELECT-only role for a Grafana Postgres datasource (or any reporting tool).
-- Run it once per database, as the role that runs baton's migrations (the owner
-- of its tables, so the default privileges below cover tables later migrations
-- create), with psql:
--
--   psql "$BATON_DATABASE_URL" -v role=baton_grafana -v password="$PW" -v schema=baton \
--        -f deploy/grafana/readonly-role.sql
--
-- The running role needs CREATEROLE (or let a superuser create the role first
-- and drop the CREATE ROLE line). What the role gets:
--   * LOGIN, nothing else: no superuser, no CREATEDB, no CREATEROLE, no
--     replication, 4 connections at most, statements cut at 30 s;
--   * USAGE on baton's schema and SELECT on its tables and reporting views,
--     including those created later by the same owner — never INSERT, UPDATE,
--     DELETE, TRUNCATE, REFERENCES or TRIGGER, and no CREATE in the schema;
--   * not api_tokens (token hashes are not for dashboards);
--   * read-only transactions by default and baton's schema on its search_path,
--     so dashboard SQL names tables unqualified.
-- TestGrafanaReadOnlyRole (internal/metrics) runs this file, checks every table
-- and view is readable and every write is refused, and EXPLAINs every SQL target
-- of the dashboards as this role.

CREATE ROLE :"role" LOGIN PASSWORD :'password'
    NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOINHERIT CONNECTION LIMIT 4;
ALTER ROLE :"role" SET default_transaction_read_only = on;
ALTER ROLE :"role" SET statement_timeout = '30s';
ALTER ROLE :"role" SET search_path = :"schema";
GRANT USAGE ON SCHEMA :"schema" TO :"role";
GRANT SELECT ON ALL TABLES IN SCHEMA :"schema" TO :"role";
REVOKE ALL ON :"schema".api_tokens FROM :"role";
ALTER DEFAULT PRIVILEGES IN SCHEMA :"schema" GRANT SELECT ON TABLES TO :"role";
