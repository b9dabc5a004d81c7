#!/usr/bin/env bash
# Builds the overdraft:local image from this checkout: release binaries plus
# the shared libraries they need, on an empty (scratch) image. No base image
# is pulled. Usage: scripts/docker-image.sh
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --bin ledger --bin atm --bin chaos
stage=target/docker
rm -rf "$stage"
mkdir -p "$stage/rootfs/usr/local/bin" "$stage/rootfs/etc/overdraft" "$stage/rootfs/data" "$stage/rootfs/tmp"
for bin in ledger atm chaos; do
  cp "target/release/$bin" "$stage/rootfs/usr/local/bin/"
  # Every library the binary links, at the path the loader looks for it.
  for lib in $(ldd "target/release/$bin" | grep -o '/[^ ]*'); do
    mkdir -p "$stage/rootfs$(dirname "$lib")"
    cp -L "$lib" "$stage/rootfs$lib"
  done
done
cp chaos/schedules/*.toml "$stage/rootfs/etc/overdraft/"
echo 'hosts: files dns' > "$stage/rootfs/etc/nsswitch.conf"
cp docker/Dockerfile "$stage/Dockerfile"
docker build -q -t overdraft:local "$stage"
