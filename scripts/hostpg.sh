#!/usr/bin/env bash
# Starts (or stops) a throwaway PostgreSQL cluster from the host's server binaries,
# for when Docker is not available. Prints the cluster's URL as the last line.
#   scripts/hostpg.sh start DIR [PORT] [durable]   # PORT default 55432
#   scripts/hostpg.sh stop DIR
# Test clusters run with fsync off (a crash loses a throwaway database); "durable"
# keeps the stock settings (fsync, synchronous_commit, full_page_writes on) for
# benchmarks whose figures users should be able to expect.
set -euo pipefail

cmd=${1:?usage: hostpg.sh start|stop DIR [PORT]}
dir=${2:?usage: hostpg.sh start|stop DIR [PORT]}
port=${3:-55432}
mode=${4:-test}
speed="-c fsync=off -c synchronous_commit=off -c full_page_writes=off"
[ "$mode" = durable ] && speed=""

bindir=""
for d in /usr/lib/postgresql/*/bin /usr/local/pgsql/bin; do
  [ -x "$d/initdb" ] && bindir=$d
done
if [ -z "$bindir" ] && command -v initdb >/dev/null; then bindir=$(dirname "$(command -v initdb)"); fi
if [ -z "$bindir" ]; then
  echo "hostpg: no PostgreSQL server binaries (initdb) found; install postgresql or use Docker" >&2
  exit 1
fi

# Postgres refuses to run as root: run it as the postgres user when we are root.
as_pg() {
  if [ "$(id -u)" = 0 ]; then
    id postgres >/dev/null 2>&1 || useradd --system --home /nonexistent --shell /usr/sbin/nologin postgres
    runuser -u postgres -- "$@"
  else
    "$@"
  fi
}

case "$cmd" in
start)
  mkdir -p "$dir"
  [ "$(id -u)" = 0 ] && chown postgres "$dir"
  if [ ! -f "$dir/data/PG_VERSION" ]; then
    as_pg "$bindir/initdb" -D "$dir/data" -U baton --auth=trust -E UTF8 >"$dir/initdb.log" 2>&1 \
      || { cat "$dir/initdb.log" >&2; exit 1; }
  fi
  if ! as_pg "$bindir/pg_ctl" -D "$dir/data" status >/dev/null 2>&1; then
    as_pg "$bindir/pg_ctl" -D "$dir/data" -l "$dir/postgres.log" -w -t 60 start \
      -o "-p $port -k $dir -c listen_addresses=127.0.0.1 $speed -c max_connections=500" >&2 \
      || { tail -20 "$dir/postgres.log" >&2; exit 1; }
  fi
  echo "postgres://baton@127.0.0.1:$port/postgres?sslmode=disable"
  ;;
stop)
  as_pg "$bindir/pg_ctl" -D "$dir/data" -m fast stop >&2 || true
  ;;
*)
  echo "usage: hostpg.sh start|stop DIR [PORT]" >&2
  exit 2
  ;;
esac
