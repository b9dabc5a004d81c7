#!/usr/bin/env bash
# Builds overdraft-postgres:local for the replicas demo from Debian's
# postgresql-15 on this machine, with no base image (nothing can be pulled
# here): the server binaries and the libraries ldd lists, on scratch, with a
# passwd entry, a data directory made by initdb here and owned by that user,
# and a pg_hba that admits the demo network with a password.
#
# The database user is `postgres`, its password `overdraft` (a demo on a
# private Docker network; set your own for anything else):
#   postgresql://postgres:overdraft@postgres:5432/postgres
# Usage: scripts/postgres-image.sh
set -euo pipefail
cd "$(dirname "$0")/.."

[ "$(id -u)" -eq 0 ] || { echo "run as root: initdb runs as the postgres user (runuser) and the staged files are chowned" >&2; exit 1; }
postgres="$(command -v postgres 2>/dev/null || ls -d /usr/lib/postgresql/*/bin/postgres 2>/dev/null | sort -V | tail -1 || true)"
[ -n "$postgres" ] || { echo "needs PostgreSQL: apt-get install -y postgresql-15" >&2; exit 1; }
bin="$(dirname "$(readlink -f "$postgres")")"
version="$(basename "$(dirname "$bin")")"
[ -x "$bin/postgres" ] && [ -x "$bin/initdb" ] || { echo "needs PostgreSQL: apt-get install -y postgresql-15" >&2; exit 1; }
uid=999
stage=target/docker-postgres
rm -rf "$stage"
root="$stage/rootfs"
mkdir -p "$root/usr/lib/postgresql/$version/bin" "$root/usr/lib/postgresql/$version/lib" \
  "$root/usr/share" "$root/etc" "$root/tmp"
chmod 1777 "$root/tmp"

with_libraries() { # file...: copies each, and every library it links, to the same path
  for file in "$@"; do
    mkdir -p "$root$(dirname "$file")"
    cp -L "$file" "$root$file"
    for lib in $(ldd "$file" 2>/dev/null | grep -o '/[^ ]*' || true); do
      [ -e "$root$lib" ] && continue
      mkdir -p "$root$(dirname "$lib")"
      cp -L "$lib" "$root$lib"
    done
  done
}
with_libraries "$bin/postgres" "$bin/pg_isready"
# Modules the server may load; LLVM's JIT stays out (jit = off below).
with_libraries $(ls "/usr/lib/postgresql/$version/lib/"*.so | grep -v llvmjit)
cp -r "/usr/share/postgresql/$version" "$root/usr/share/postgresql-$version.tmp"
mkdir -p "$root/usr/share/postgresql"
mv "$root/usr/share/postgresql-$version.tmp" "$root/usr/share/postgresql/$version"
cp -r /usr/share/zoneinfo "$root/usr/share/zoneinfo"
echo "postgres:x:$uid:$uid:PostgreSQL:/var/lib/postgresql:/nonexistent" >"$root/etc/passwd"
echo "postgres:x:$uid:" >"$root/etc/group"

# initdb refuses root: it runs as the host's postgres user in a directory
# of its own, and the result is handed to the image's user.
scratch="$(mktemp -d)"
trap 'rm -rf "$scratch"' EXIT
chown postgres:postgres "$scratch"
echo overdraft >"$scratch/password"
chown postgres:postgres "$scratch/password"
runuser -u postgres -- "$bin/initdb" -D "$scratch/data" -U postgres --pwfile="$scratch/password" \
  --auth-local=trust --auth-host=scram-sha-256 -E UTF8 --locale=C --wal-segsize=1 >/dev/null
cat >>"$scratch/data/pg_hba.conf" <<'HBA'
# The demo's Docker network: any address, with the password.
host    all             all             0.0.0.0/0               scram-sha-256
HBA
cat >>"$scratch/data/postgresql.conf" <<'CONF'
listen_addresses = '*'
unix_socket_directories = '/tmp'
jit = off
max_connections = 200
synchronous_commit = on
CONF
# Outside rootfs: COPY makes files root's unless told, and PostgreSQL wants
# its data directory its own, mode 0700 (a copied directory's own mode is
# kept only below the destination, hence the parent).
mkdir -p "$stage/home"
cp -a "$scratch/data" "$stage/home/data"
chmod 700 "$stage/home/data"

cat >"$stage/Dockerfile" <<DOCKERFILE
# PostgreSQL $version from this machine's Debian packages, on an empty image
# (see scripts/postgres-image.sh).
FROM scratch
COPY rootfs/ /
COPY --chown=$uid:$uid home/ /var/lib/postgresql/
USER $uid
ENV PATH=/usr/lib/postgresql/$version/bin
EXPOSE 5432
CMD ["postgres", "-D", "/var/lib/postgresql/data"]
DOCKERFILE
docker build -q -t overdraft-postgres:local "$stage"
docker image inspect overdraft-postgres:local --format 'overdraft-postgres:local {{.Size}} bytes'
