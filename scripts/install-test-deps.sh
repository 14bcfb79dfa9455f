#!/usr/bin/env bash
# Installs the Debian packages that docxy's end-to-end tests need (Debian bookworm, as root).
# gcc and libc6-dev build the sendfile engine (native/sendfile.c) that npm test and npm run build compile.
# Idempotent: installs only what is missing, runs `apt-get update` at most once.
# Usage: sudo npm run install-test-deps
set -euo pipefail

# package:probe — the probe is a command on PATH, or "dpkg" to ask dpkg about the package itself.
deps=(
  docker-registry:docker-registry
  skopeo:skopeo
  podman:podman
  containerd:containerd
  docker.io:dockerd
  nginx-light:nginx
  uidmap:newuidmap
  iproute2:ip
  openssl:openssl
  jq:jq
  ca-certificates:dpkg
  wrk:wrk
  chromium:chromium
  prometheus:promtool
  shellcheck:shellcheck
  runc:runc
  busybox-static:dpkg
  ceph-mon:ceph-mon
  ceph-osd:ceph-osd
  radosgw:radosgw
  redis-server:redis-server
  gcc:gcc
  libc6-dev:dpkg
)

installed() {
  local pkg=$1 probe=$2
  if [[ $probe == dpkg ]]; then
    [[ $(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null || true) == "install ok installed" ]]
  else
    # nginx may come from another nginx package (nginx, nginx-core...): any nginx binary will do.
    PATH="$PATH:/usr/sbin:/sbin" command -v "$probe" >/dev/null 2>&1
  fi
}

missing=()
for dep in "${deps[@]}"; do
  pkg=${dep%%:*}
  probe=${dep#*:}
  installed "$pkg" "$probe" || missing+=("$pkg")
done

if ((${#missing[@]} == 0)); then
  echo "install-test-deps: all test dependencies are present"
  exit 0
fi

if ((EUID != 0)); then
  echo "install-test-deps: missing ${missing[*]}; run as root: sudo npm run install-test-deps" >&2
  exit 1
fi

echo "install-test-deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update
apt-get install -y --no-install-recommends "${missing[@]}"
echo "install-test-deps: installed ${missing[*]}"
