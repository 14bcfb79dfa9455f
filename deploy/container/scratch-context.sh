#!/usr/bin/env bash
# Assembles the build context of Containerfile.scratch in DIR from the single executable and
# this machine's files (no base image, no registry): the shared libraries `ldd` names, CA
# certificates, a static busybox (Debian's busybox-static) for the HEALTHCHECK.
# Usage: deploy/container/scratch-context.sh dist-bin/docxy DIR    then: podman build --format docker DIR
set -euo pipefail
if (($# != 2)); then
  echo "usage: $0 BINARY DIR" >&2
  exit 2
fi
binary=$1
dir=$2
here=$(cd "$(dirname "$0")" && pwd)
root="$dir/rootfs"
busybox=$(command -v busybox || true)
# ldd fails on a static executable: that is the one wanted (the image has no libraries for another).
if [[ -z $busybox ]] || ldd "$busybox" >/dev/null 2>&1; then
  echo "$0: needs a statically linked busybox for the HEALTHCHECK: apt-get install busybox-static" >&2
  exit 1
fi
if ldd "$binary" | grep -q 'not found'; then
  echo "$0: $binary links libraries this machine lacks:" >&2
  ldd "$binary" | grep 'not found' >&2
  exit 1
fi

rm -rf "$root" "$dir/data"
mkdir -p "$root"/{bin,etc/docxy,etc/ssl/certs,tmp,usr/local/bin,var/lib} "$dir/data"
chmod 1777 "$root/tmp"
install -m 0755 "$binary" "$root/usr/local/bin/docxy"
install -m 0755 "$busybox" "$root/bin/busybox"
# Each library at the path ldd resolved it to (the dynamic loader's own path included).
ldd "$binary" | grep -o '/[^ ]*' | while read -r lib; do
  mkdir -p "$root$(dirname "$lib")"
  cp -L "$lib" "$root$lib"
done
cp -L /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/ca-certificates.crt"
install -m 0644 "$here/docxy.yaml" "$root/etc/docxy/docxy.yaml"
printf 'root:x:0:0:root:/root:/bin/false\ndocxy:x:10001:10001:docxy:/var/lib/docxy:/bin/false\n' >"$root/etc/passwd"
printf 'root:x:0:\ndocxy:x:10001:\n' >"$root/etc/group"
cp "$here/Containerfile.scratch" "$dir/Containerfile"
echo "scratch-context: $dir ($(du -sh "$root" | cut -f1))"
