#!/usr/bin/env bash
# Build (once) a local PostgreSQL 15 image that behaves like the official
# `postgres` image closely enough for testcontainers-go's postgres module.
#
# Why: the integration tests run postgres through testcontainers-go with the
# image named in BATON_TEST_POSTGRES_IMAGE. On a laptop that is the official
# `postgres` image, but machines that cannot reach any container registry
# cannot pull it. Debian packages are reachable, so we debootstrap a minimal
# bookworm root with postgresql-15, add an entrypoint implementing the official
# image's env contract, and `docker import` it.
#
# Usage: scripts/postgres-image.sh [IMAGE_TAG]     (default baton-postgres:15-local)
#   Prints the image name as the LAST line of stdout; progress goes to stderr:
#     img=$(scripts/postgres-image.sh | tail -1)
#   Idempotent: returns at once if the image already exists.
#   Building needs root (debootstrap) and Debian's package mirror.
set -euo pipefail

TAG="${1:-baton-postgres:15-local}"
SUITE=bookworm

log() { printf '%s\n' "postgres-image: $*" >&2; }
image_exists() { docker image inspect "$TAG" >/dev/null 2>&1; }

# Fast path: called on every `make test`, so do nothing else when built.
if image_exists; then
    echo "$TAG"
    exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
    log "building $TAG needs root (debootstrap); re-run as root"
    exit 1
fi

# Serialise concurrent builds (e.g. parallel make targets); whoever waited on
# the lock re-checks and finds the image built by the first one.
LOCK=/var/tmp/baton-postgres-image.lock
exec 9>"$LOCK"
if ! flock -n 9; then
    log "another build is running; waiting for it"
    flock 9
fi
if image_exists; then
    echo "$TAG"
    exit 0
fi

START=$SECONDS

# --- tools -------------------------------------------------------------------
if ! command -v debootstrap >/dev/null 2>&1 && [ ! -x /usr/sbin/debootstrap ]; then
    log "installing debootstrap"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >&2
    apt-get install -y -qq debootstrap >&2
fi
export PATH="$PATH:/usr/sbin:/sbin"

# --- mirror ------------------------------------------------------------------
# Read at run time from the host's apt configuration, so no mirror host name
# lives in the repository. deb822 first: the first URIs: of the stanza whose
# Suites: lists exactly "bookworm" (not bookworm-security etc.).
MIRROR=""
if [ -r /etc/apt/sources.list.d/debian.sources ]; then
    MIRROR=$(awk -v suite="$SUITE" '
        function flush() { if (uri != "" && has) { print uri; found = 1; exit } uri = ""; has = 0 }
        /^[[:space:]]*$/ { flush(); next }
        /^URIs:/   { if (uri == "") uri = $2 }
        /^Suites:/ { for (i = 2; i <= NF; i++) if ($i == suite) has = 1 }
        END { if (!found && uri != "" && has) print uri }
    ' /etc/apt/sources.list.d/debian.sources)
fi
if [ -z "$MIRROR" ] && [ -r /etc/apt/sources.list ]; then
    # "deb [opts] URI suite comp..." -> first URI whose suite is bookworm.
    MIRROR=$(sed -e 's/\[[^]]*\]//' /etc/apt/sources.list |
        awk -v suite="$SUITE" '$1 == "deb" && $3 == suite { print $2; exit }')
fi
if [ -z "$MIRROR" ]; then
    log "no Debian $SUITE mirror found in /etc/apt/sources.list.d/debian.sources or /etc/apt/sources.list"
    exit 1
fi
log "mirror: $MIRROR"

# --- root filesystem ---------------------------------------------------------
# /var/tmp rather than /tmp: /tmp may be a nodev/noexec tmpfs, which breaks
# debootstrap's chroot.
DIR=$(mktemp -d /var/tmp/baton-pg-rootfs.XXXXXX)

# debootstrap mounts proc/sys/dev* inside the root; a failed run can leave them
# mounted, so unmount before deleting, and never cross file systems.
unmount_all() {
    local m
    # deepest first
    for m in $(awk -v d="$DIR" 'index($2, d "/") == 1 { print $2 }' /proc/mounts | sort -r); do
        umount -l "$m" 2>/dev/null || true
    done
}
cleanup() {
    unmount_all
    rm -rf --one-file-system "$DIR"
    rm -f "$DIR.log"
}
trap cleanup EXIT

log "debootstrap $SUITE with postgresql-15 into $DIR (takes a few minutes)"
# Keep debootstrap's chatter off stdout (callers read the last stdout line).
if ! debootstrap --variant=minbase --include=postgresql-15 "$SUITE" "$DIR" "$MIRROR" >"$DIR.log" 2>&1; then
    tail -n 40 "$DIR.log" >&2
    [ -f "$DIR/debootstrap/debootstrap.log" ] && tail -n 40 "$DIR/debootstrap/debootstrap.log" >&2
    rm -f "$DIR.log"
    log "debootstrap failed"
    exit 1
fi
rm -f "$DIR.log"
unmount_all

log "shrinking root"
# The package's postinst made a "main" cluster under /var/lib/postgresql/15 and
# /etc/postgresql/15; the entrypoint uses its own PGDATA, so drop them.
rm -rf "$DIR"/var/lib/postgresql/15 "$DIR"/etc/postgresql/15
# Caches, indexes and docs are not needed at run time. Translations are dropped
# (postgres falls back to built-in English messages); locale.alias is kept.
rm -rf "$DIR"/var/cache/apt/* "$DIR"/var/lib/apt/lists/* \
    "$DIR"/usr/share/doc "$DIR"/usr/share/man "$DIR"/usr/share/info \
    "$DIR"/var/cache/debconf/*-old "$DIR"/var/log/*.log "$DIR"/var/log/apt/*
find "$DIR"/usr/share/locale -mindepth 1 -maxdepth 1 ! -name locale.alias -exec rm -rf {} +
# Docker supplies /dev, /proc, /sys, resolv.conf and hostname at run time.
find "$DIR"/dev "$DIR"/proc "$DIR"/sys -mindepth 1 -maxdepth 1 -exec rm -rf --one-file-system {} + 2>/dev/null || true
# (rm first: never write through a symlink that could point at the host's file.)
rm -f "$DIR"/etc/resolv.conf "$DIR"/etc/hostname
: >"$DIR"/etc/resolv.conf
: >"$DIR"/etc/hostname

mkdir -p "$DIR"/usr/local/bin
cat >"$DIR"/usr/local/bin/docker-entrypoint.sh <<'ENTRYPOINT'
#!/bin/bash
# Entrypoint implementing the parts of the official postgres image's contract
# that testcontainers-go's postgres module relies on:
#   env POSTGRES_USER (default postgres), POSTGRES_PASSWORD, POSTGRES_DB
#   (default = user), PGDATA, POSTGRES_INITDB_ARGS, POSTGRES_HOST_AUTH_METHOD;
#   scripts in /docker-entrypoint-initdb.d (*.sh, *.sql, *.sql.gz) on first start;
#   "database system is ready to accept connections" logged twice on first
#   start (temporary socket-only server, then the real one).
set -Eeuo pipefail

export PGDATA="${PGDATA:-/var/lib/postgresql/data}"
export LANG="${LANG:-C.UTF-8}"

# `postgres ...` or `-c ...` run the server; anything else runs as given.
if [ "$#" -eq 0 ] || [ "${1:0:1}" = '-' ]; then
    set -- postgres "$@"
fi
if [ "$1" != 'postgres' ]; then
    exec "$@"
fi

# As root: prepare directories, then re-exec this script as the postgres user
# (postgres refuses to run as root). setpriv execs, so postgres ends up PID 1
# and receives docker's stop signal (SIGINT = fast shutdown) directly.
if [ "$(id -u)" = '0' ]; then
    mkdir -p "$PGDATA" /var/run/postgresql
    chown postgres:postgres /var/run/postgresql
    chmod 3777 /var/run/postgresql
    # Only chown when needed, to keep restarts with big data dirs quick.
    find "$PGDATA" \! -user postgres -exec chown postgres:postgres '{}' + 2>/dev/null || true
    chmod 00700 "$PGDATA" 2>/dev/null || true
    export HOME=/var/lib/postgresql
    exec setpriv --reuid=postgres --regid=postgres --init-groups -- "$BASH_SOURCE" "$@"
fi

POSTGRES_USER="${POSTGRES_USER:-postgres}"
POSTGRES_DB="${POSTGRES_DB:-$POSTGRES_USER}"
POSTGRES_HOST_AUTH_METHOD="${POSTGRES_HOST_AUTH_METHOD:-scram-sha-256}"
export PGUSER="$POSTGRES_USER" PGPASSWORD="${POSTGRES_PASSWORD:-}"

if [ ! -s "$PGDATA/PG_VERSION" ]; then
    if [ -z "${POSTGRES_PASSWORD:-}" ] && [ "$POSTGRES_HOST_AUTH_METHOD" != 'trust' ]; then
        echo >&2 'error: database is uninitialized and POSTGRES_PASSWORD is not set'
        echo >&2 '       (set it, or POSTGRES_HOST_AUTH_METHOD=trust to allow all connections)'
        exit 1
    fi
    mkdir -p "$PGDATA"
    chmod 00700 "$PGDATA"

    # Password through a file descriptor, never on a command line.
    # shellcheck disable=SC2086  # POSTGRES_INITDB_ARGS is a word list on purpose
    initdb --username="$POSTGRES_USER" --pwfile=<(printf '%s\n' "${POSTGRES_PASSWORD:-}") \
        --encoding=UTF8 --locale=C.UTF-8 \
        --auth-local=trust --auth-host="$POSTGRES_HOST_AUTH_METHOD" \
        ${POSTGRES_INITDB_ARGS:-}

    # Reachable from outside the container, with password auth.
    printf '\n%s\n' "listen_addresses = '*'" >>"$PGDATA/postgresql.conf"
    printf '\n%s\n' "host all all all $POSTGRES_HOST_AUTH_METHOD" >>"$PGDATA/pg_hba.conf"

    # Temporary server on the unix socket only, so nobody connects before
    # the database is set up. This logs the first "ready to accept".
    # The user's server args (e.g. -c fsync=off) apply to it too.
    pg_ctl -D "$PGDATA" -w start -o "$(printf '%q ' "${@:2}" -c "listen_addresses=")"

    psql_run() { psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --no-password --no-psqlrc "$@"; }
    if [ "$POSTGRES_DB" != 'postgres' ]; then
        psql_run --dbname postgres --set db="$POSTGRES_DB" <<<'CREATE DATABASE :"db";'
    fi
    if [ -d /docker-entrypoint-initdb.d ]; then
        shopt -s nullglob
        for f in /docker-entrypoint-initdb.d/*; do
            case "$f" in
                *.sh)     echo "running $f"; if [ -x "$f" ]; then "$f"; else . "$f"; fi ;;
                *.sql)    echo "running $f"; psql_run --dbname "$POSTGRES_DB" -f "$f" ;;
                *.sql.gz) echo "running $f"; gunzip -c "$f" | psql_run --dbname "$POSTGRES_DB" ;;
                *)        echo "ignoring $f" ;;
            esac
        done
    fi

    pg_ctl -D "$PGDATA" -m fast -w stop
    unset PGPASSWORD
    echo 'PostgreSQL init process complete; ready for start up.'
fi

exec "$@"
ENTRYPOINT
chmod 0755 "$DIR"/usr/local/bin/docker-entrypoint.sh

# Default PGDATA and the socket directory must exist and belong to postgres
# even if the entrypoint is bypassed (e.g. `docker run IMAGE bash`).
# (/var/run is an absolute symlink to /run: use /run so as not to follow it
# out of the root onto the host.)
mkdir -p "$DIR"/var/lib/postgresql/data "$DIR"/run/postgresql
chroot "$DIR" chown postgres:postgres /var/lib/postgresql/data /run/postgresql
chmod 0700 "$DIR"/var/lib/postgresql/data

log "importing into docker as $TAG"
tar -C "$DIR" --numeric-owner -c . | docker import \
    --change 'ENTRYPOINT ["/usr/local/bin/docker-entrypoint.sh"]' \
    --change 'CMD ["postgres"]' \
    --change 'ENV PATH=/usr/lib/postgresql/15/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV PGDATA=/var/lib/postgresql/data' \
    --change 'EXPOSE 5432' \
    - "$TAG" >&2

# SIGINT = postgres "fast shutdown", as in the official image, so `docker stop`
# does not wait for clients (SIGTERM is "smart shutdown"). Older engines (e.g.
# 20.10) reject STOPSIGNAL in `import --change`, so add it with a one-line,
# context-free build on top of the local image (nothing is pulled). If even
# that fails the image still works; it just stops more slowly.
if ! printf 'FROM %s\nSTOPSIGNAL SIGINT\n' "$TAG" | docker build -q -t "$TAG" - >&2; then
    log "warning: could not set STOPSIGNAL SIGINT; docker stop will send SIGTERM"
fi

SIZE=$(docker image inspect --format '{{.Size}}' "$TAG")
log "built $TAG in $((SECONDS - START))s, size $((SIZE / 1024 / 1024)) MiB"
echo "$TAG"
