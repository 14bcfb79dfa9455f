#!/usr/bin/env bash
# docxy's installer: one command, as root, on Debian or Ubuntu. It installs the docxy executable,
# a systemd unit (deploy/systemd/docxy.service) and /etc/docxy/config.yaml for one of three
# deployment modes, gets a certificate (existing files, or certbot/acme.sh in webroot mode, which
# docxy serves itself so that renewals work while it holds port 80), starts docxy, waits for
# /health and prints the client snippets. Run it again to upgrade: the config is kept.
#
#   install.sh                                   # asks what it needs
#   install.sh --domain mirror.example.com --mode standalone --acme certbot --email me@example.com
#   install.sh --domain mirror.example.com --mode nginx --cert fullchain.pem --key key.pem
#   install.sh --prefix /tmp/root --domain example.test --mode http --binary ./docxy   # no systemd, no root
#   install.sh --uninstall [--purge]
#
# See README "Install on a server", or `install.sh --help`.
set -euo pipefail

# Where the executable comes from unless --binary says otherwise (the release asset).
readonly DEFAULT_BINARY_URL="https://github.com/docxy/docxy/releases/latest/download/docxy-linux-x64"
# Where the templates come from when this script runs outside a checkout (curl ... | bash).
readonly TEMPLATE_BASE_URL="https://raw.githubusercontent.com/docxy/docxy/main/deploy"
# docxy's local address behind nginx.
readonly DOCXY_BEHIND_NGINX="127.0.0.1:5000"
readonly ACCEL_PREFIX="/_docxy_blobs/"

usage() {
  cat <<'EOF'
Usage: install.sh [options]        (as root; asks for whatever is missing when run in a terminal)

  --domain NAME           the name clients use (publicUrl https://NAME)
  --mode MODE             standalone: docxy serves HTTPS on 443, HTTP on 80 (ACME, redirect)
                          nginx:      docxy on 127.0.0.1:5000 behind nginx (site config written)
                          http:       plain HTTP on 80, an origin behind a CDN that does TLS
  --binary URL|FILE       the docxy executable (default: the latest release)
  --sha256 HEX            refuse a binary whose SHA-256 differs
  --cert FILE --key FILE  an existing certificate chain and key (copied to /etc/docxy/tls)
  --acme certbot|acme.sh  issue one from Let's Encrypt in webroot mode (/var/lib/docxy/acme),
                          renewed by the client, reloaded by docxy (SIGHUP)
  --email ADDRESS         the ACME account's address
  --public-url URL        what clients use, if not https://DOMAIN (http mode behind a CDN)
  --prefix DIR            write everything under DIR instead of / (implies --no-start:
                          no systemd, no user, no packages; for tests and packaging)
  --dry-run               print what would be done, change nothing
  --no-start              do not enable or start the service
  --uninstall             remove the executable, the unit and the nginx site
                          (keeps /etc/docxy and /var/lib/docxy)
  --purge                 with --uninstall: remove /etc/docxy, /var/lib/docxy and the user too
  -y, --yes               never ask: fail on a missing option instead
  -h, --help              this help
EOF
}

die() {
  printf 'install.sh: %s\n' "$*" >&2
  exit 1
}

say() {
  printf '==> %s\n' "$*"
}

# ---------------------------------------------------------------------------------------------
# Options

domain="" mode="" binary="" sha256="" cert="" key="" acme="" email="" prefix="" public_url=""
dry_run=0 no_start=0 uninstall=0 purge=0 assume_yes=0

value_of() {
  # $1: the option, $2: its value (if any).
  if (($# < 2)) || [[ -z $2 || $2 == --* ]]; then
    die "$1 needs a value (see --help)"
  fi
  printf '%s' "$2"
}

while (($# > 0)); do
  case $1 in
    --*=*)
      # --flag=value is --flag value.
      set -- "${1%%=*}" "${1#*=}" "${@:2}"
      continue
      ;;
    --domain) domain=$(value_of "$@"); shift ;;
    --mode) mode=$(value_of "$@"); shift ;;
    --binary) binary=$(value_of "$@"); shift ;;
    --sha256) sha256=$(value_of "$@"); shift ;;
    --cert) cert=$(value_of "$@"); shift ;;
    --key) key=$(value_of "$@"); shift ;;
    --acme) acme=$(value_of "$@"); shift ;;
    --email) email=$(value_of "$@"); shift ;;
    --public-url) public_url=$(value_of "$@"); shift ;;
    --prefix) prefix=$(value_of "$@"); shift ;;
    --dry-run) dry_run=1 ;;
    --no-start) no_start=1 ;;
    --uninstall) uninstall=1 ;;
    --purge) purge=1 ;;
    -y | --yes) assume_yes=1 ;;
    -h | --help)
      usage
      exit 0
      ;;
    *) die "unknown option: $1 (see --help)" ;;
  esac
  shift
done

# With --prefix nothing outside DIR is touched: no systemctl, no useradd, no apt-get.
on_system=1
if [[ -n $prefix ]]; then
  [[ $prefix == /* ]] || prefix="$PWD/$prefix"
  prefix=${prefix%/}
  [[ $prefix =~ ^/[A-Za-z0-9._/+-]*$ ]] || die "--prefix: only letters, digits and ._/+- please, got: $prefix"
  on_system=0
  no_start=1
fi
((purge == 0 || uninstall == 1)) || die "--purge goes with --uninstall"

# Where everything goes (under --prefix when given).
readonly ROOT=$prefix
readonly BIN="$ROOT/usr/local/bin/docxy"
readonly ETC_DIR="$ROOT/etc/docxy"
readonly CONFIG="$ETC_DIR/config.yaml"
readonly TLS_DIR="$ETC_DIR/tls"
readonly TLS_CERT="$TLS_DIR/fullchain.pem"
readonly TLS_KEY="$TLS_DIR/key.pem"
readonly RENEW_HOOK="$ETC_DIR/renew-hook.sh"
readonly UNIT="$ROOT/etc/systemd/system/docxy.service"
readonly STATE_DIR="$ROOT/var/lib/docxy"
readonly DATA_DIR="$STATE_DIR/data"
readonly WEBROOT="$STATE_DIR/acme"
readonly NGINX_SITE="$ROOT/etc/nginx/conf.d/docxy.conf"

# ---------------------------------------------------------------------------------------------
# Doing things (or, with --dry-run, saying what would be done)

# Runs a command; with --dry-run prints it instead.
run() {
  if ((dry_run)); then
    printf '+'
    printf ' %q' "$@"
    printf '\n'
  else
    "$@"
  fi
}

# Runs a command on the real system only (not under --prefix).
on_system() {
  if ((on_system)); then run "$@"; fi
}

# make_dir DIR MODE [OWNER:GROUP]
make_dir() {
  local dir=$1 mode=$2 owner=${3:-}
  if ((dry_run)); then
    [[ -d $dir ]] || printf '+ mkdir -p -m %s %s\n' "$mode" "$dir"
    return 0
  fi
  mkdir -p "$dir"
  chmod "$mode" "$dir"
  if [[ -n $owner ]] && ((on_system)); then chown "$owner" "$dir"; fi
}

# write_file FILE MODE [GROUP] < content: atomically (a temporary file renamed over it).
write_file() {
  local file=$1 mode=$2 group=${3:-} content tmp
  content=$(
    cat
    printf x
  )
  content=${content%x}
  if ((dry_run)); then
    printf -- '--- would write %s (mode %s)\n%s--- end of %s\n' "$file" "$mode" "$content" "$file"
    return 0
  fi
  tmp=$(mktemp "$file.XXXXXX")
  printf '%s' "$content" >"$tmp"
  chmod "$mode" "$tmp"
  if [[ -n $group ]] && ((on_system)); then chgrp "$group" "$tmp"; fi
  mv -f "$tmp" "$file"
}

remove() {
  local path
  for path in "$@"; do
    if [[ -e $path || -L $path ]]; then run rm -rf -- "$path"; fi
  done
}

# Installs Debian packages that are missing (real system only): ensure_package COMMAND PACKAGE
ensure_package() {
  local command=$1 package=$2
  # Under --prefix nothing is installed: what is needed and missing fails where it is used.
  if ((on_system == 0)) || PATH="$PATH:/usr/sbin:/sbin" command -v "$command" >/dev/null 2>&1; then return 0; fi
  say "installing $package"
  if [[ -z ${apt_updated:-} ]]; then
    run env DEBIAN_FRONTEND=noninteractive apt-get update -q
    apt_updated=1
  fi
  run env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$package"
}

# docxy itself, without DOCXY_* overrides from this shell; as the docxy user on the real system.
docxy() {
  local -a as_user=()
  if ((on_system)); then as_user=(runuser -u docxy --); fi
  env -u DOCXY_CONFIG -u DOCXY_LISTEN -u DOCXY_PUBLIC_URL -u DOCXY_DATA_DIR -u DOCXY_LOG_LEVEL \
    -u DOCXY_CERT_PATH -u DOCXY_KEY_PATH "${as_user[@]}" "$BIN" "$@"
}

# render TEMPLATE NAME=VALUE...: the rules of deploy/nginx/docxy.conf (and the unit): lines
# starting with "#!" are notes, a line with a placeholder given no (or an empty) value is left out.
render() {
  local template=$1 line rest name keep pair
  shift
  local -A values=()
  for pair in "$@"; do values[${pair%%=*}]=${pair#*=}; done
  while IFS= read -r line || [[ -n $line ]]; do
    [[ $line == '#!'* ]] && continue
    keep=1 rest=$line
    while [[ $rest =~ \{\{([A-Z_]+)\}\} ]]; do
      name=${BASH_REMATCH[1]}
      if [[ -z ${values[$name]:-} ]]; then
        keep=0
        break
      fi
      rest=${rest#*"${BASH_REMATCH[0]}"}
    done
    ((keep)) || continue
    for name in "${!values[@]}"; do line=${line//"{{$name}}"/"${values[$name]}"}; done
    printf '%s\n' "$line"
  done <"$template"
}

# A template next to this script (a checkout or an unpacked release), else downloaded.
template() {
  local name=$1 here
  here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
  if [[ -f "$here/$name" ]]; then
    printf '%s' "$here/$name"
    return 0
  fi
  local tmp
  tmp=$(mktemp)
  fetch "$TEMPLATE_BASE_URL/$name" "$tmp"
  printf '%s' "$tmp"
}

fetch() {
  local url=$1 out=$2
  if command -v curl >/dev/null 2>&1; then
    curl -fsSL --proto '=https,http' --retry 3 -o "$out" "$url"
  elif command -v wget >/dev/null 2>&1; then
    wget -q -O "$out" "$url"
  else
    die "curl or wget is needed to download $url"
  fi
}

# ---------------------------------------------------------------------------------------------
# Uninstall

if ((uninstall)); then
  if ((on_system && dry_run == 0)); then ((EUID == 0)) || die "run as root (sudo $0 ...)"; fi
  if ((on_system)) && [[ -f $UNIT ]]; then
    on_system systemctl disable --now docxy.service || true
  fi
  remove "$BIN" "$UNIT" "$NGINX_SITE"
  if ((on_system)); then
    on_system systemctl daemon-reload || true
    if command -v nginx >/dev/null 2>&1 || [[ -x /usr/sbin/nginx ]]; then
      on_system systemctl reload nginx || true
    fi
  fi
  if ((purge)); then
    remove "$ETC_DIR" "$STATE_DIR"
    if ((on_system)) && id docxy >/dev/null 2>&1; then on_system userdel docxy || true; fi
    say "removed docxy, its config, its cache and its user"
  else
    say "removed docxy (kept $ETC_DIR and $STATE_DIR: --uninstall --purge removes them)"
  fi
  say "a certificate issued by certbot or acme.sh stays with that client (certbot delete / acme.sh --remove)"
  exit 0
fi

# ---------------------------------------------------------------------------------------------
# What to install: flags, or questions in a terminal

can_ask() {
  ((assume_yes == 0)) && { : </dev/tty; } 2>/dev/null
}

# ask PROMPT [DEFAULT]: one line from the terminal.
ask() {
  local prompt=$1 default=${2:-} answer
  read -r -p "$prompt${default:+ [$default]}: " answer </dev/tty
  printf '%s' "${answer:-$default}"
}

if [[ -z $domain ]] && can_ask; then domain=$(ask "Domain clients use (e.g. mirror.example.com)"); fi
if [[ -z $mode ]] && can_ask; then
  mode=$(ask "Mode: standalone (HTTPS on 443), nginx (behind nginx), http (CDN origin)" standalone)
fi
if [[ $mode == standalone || $mode == nginx ]] && [[ -z $cert && -z $acme ]] && can_ask; then
  case $(ask "Certificate: certbot, acme.sh (Let's Encrypt, webroot) or files" certbot) in
    certbot) acme=certbot ;;
    acme.sh) acme=acme.sh ;;
    files)
      cert=$(ask "Certificate chain (PEM)")
      key=$(ask "Private key (PEM)")
      ;;
    *) die "answer certbot, acme.sh or files" ;;
  esac
fi
if [[ -n $acme && -z $email ]] && can_ask; then email=$(ask "Email for the ACME account (optional)" ""); fi

[[ -n $domain ]] || die "--domain is needed (see --help)"
[[ $domain =~ ^[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$ ]] ||
  die "--domain: not a host name: $domain"
[[ -n $mode ]] || die "--mode standalone|nginx|http is needed (see --help)"
case $mode in
  standalone | nginx)
    if [[ -n $cert || -n $key ]]; then
      [[ -n $cert && -n $key ]] || die "--cert and --key go together"
      [[ -z $acme ]] || die "--cert/--key or --acme, not both"
      [[ -r $cert ]] || die "--cert: cannot read $cert"
      [[ -r $key ]] || die "--key: cannot read $key"
    elif [[ -z $acme && ! -f $CONFIG ]]; then
      die "--mode $mode needs a certificate: --cert FILE --key FILE, or --acme certbot|acme.sh"
    fi
    ;;
  http)
    [[ -z $cert && -z $key && -z $acme ]] || die "--mode http serves plain HTTP (TLS is the CDN's): no --cert, --key or --acme"
    ;;
  *) die "--mode must be standalone, nginx or http, got: $mode" ;;
esac
[[ -z $acme || $acme == certbot || $acme == acme.sh ]] || die "--acme must be certbot or acme.sh, got: $acme"
[[ -z $email || $email =~ ^[^@[:space:]\"\'\\]+@[A-Za-z0-9.-]+$ ]] || die "--email: not an address: $email"
[[ -z $sha256 || $sha256 =~ ^[0-9a-fA-F]{64}$ ]] || die "--sha256: 64 hex digits please"
public_url=${public_url:-https://$domain}
url_pattern='^https?://[][A-Za-z0-9.:-]+(/[A-Za-z0-9._~/-]*)?$'
[[ $public_url =~ $url_pattern ]] || die "--public-url: not an http(s) URL: $public_url"
binary=${binary:-$DEFAULT_BINARY_URL}

if ((on_system && dry_run == 0)); then
  ((EUID == 0)) || die "run as root (sudo $0 ...), or use --prefix DIR"
  [[ -f /etc/debian_version ]] || say "warning: not Debian or Ubuntu; continuing"
  if ((no_start == 0)); then command -v systemctl >/dev/null 2>&1 || die "systemd is needed (or --no-start)"; fi
fi

# Listen on both families where the machine has IPv6 ([::] is dual-stack), else IPv4.
any_address="0.0.0.0"
if [[ -s /proc/net/if_inet6 ]]; then any_address="[::]"; fi

# ---------------------------------------------------------------------------------------------
# Install

say "installing docxy ($mode mode) for $domain${ROOT:+ under $ROOT}"
if ((dry_run)); then say "dry run: nothing is changed"; fi

# curl: the download and the /health check.
if [[ $binary == http://* || $binary == https://* ]] || ((no_start == 0)); then ensure_package curl curl; fi
if [[ -n $acme ]]; then ensure_package openssl openssl; fi
if [[ $mode == nginx ]]; then ensure_package nginx nginx; fi
if [[ $acme == certbot ]]; then ensure_package certbot certbot; fi

if ((on_system)) && ! id docxy >/dev/null 2>&1; then
  say "creating the system user docxy"
  on_system useradd --system --user-group --home-dir /var/lib/docxy --no-create-home --shell /usr/sbin/nologin docxy
fi

make_dir "$(dirname "$BIN")" 0755
make_dir "$ETC_DIR" 0750 root:docxy
make_dir "$STATE_DIR" 0750 docxy:docxy
make_dir "$DATA_DIR" 0750 docxy:docxy
make_dir "$(dirname "$UNIT")" 0755

# The executable: downloaded or copied, checked, then renamed over the old one (an upgrade).
install_binary() {
  local tmp
  if ((dry_run)); then
    printf '+ install %s -> %s\n' "$binary" "$BIN"
    return 0
  fi
  tmp=$(mktemp "$BIN.XXXXXX")
  if [[ $binary == http://* || $binary == https://* ]]; then
    say "downloading $binary"
    fetch "$binary" "$tmp"
  else
    [[ -f $binary ]] || die "--binary: no such file: $binary"
    cp -- "$binary" "$tmp"
  fi
  if [[ -n $sha256 ]] && ! printf '%s  %s\n' "${sha256,,}" "$tmp" | sha256sum -c --status; then
    rm -f "$tmp"
    die "--sha256: the binary's checksum differs"
  fi
  chmod 0755 "$tmp"
  local version
  if ! version=$("$tmp" --version 2>&1); then
    rm -f "$tmp"
    die "the binary does not run: $version"
  fi
  if [[ -f $BIN ]] && cmp -s "$tmp" "$BIN"; then
    rm -f "$tmp"
    say "docxy $version is installed already"
    binary_changed=0
  else
    mv -f "$tmp" "$BIN"
    say "installed docxy $version as $BIN"
    binary_changed=1
  fi
}
binary_changed=0
install_binary

# The certificate: given files, or (ACME) a self-signed stand-in until the real one is issued,
# so that docxy (or nginx) can start and answer the challenge.
if [[ $mode != http ]]; then
  make_dir "$TLS_DIR" 0750 root:docxy
  if [[ -n $cert ]]; then
    write_file "$TLS_CERT" 0644 <"$cert"
    write_file "$TLS_KEY" 0640 docxy <"$key"
    say "certificate: $TLS_CERT and $TLS_KEY"
  elif [[ -n $acme && ! -f $TLS_CERT ]]; then
    say "a self-signed stand-in certificate until $acme issues the real one"
    run openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 30 \
      -subj "/CN=$domain" -addext "subjectAltName=DNS:$domain" \
      -keyout "$TLS_KEY" -out "$TLS_CERT" 2>/dev/null || die "openssl could not make the stand-in certificate"
    on_system chgrp docxy "$TLS_KEY"
    run chmod 0640 "$TLS_KEY"
  fi
fi
if [[ -n $acme ]]; then make_dir "$WEBROOT" 0755; fi

# The config for the mode, unless there is one (an upgrade keeps it).
config_for_mode() {
  printf '# docxy config, written by install.sh (%s mode). A second run of install.sh keeps it.\n' "$mode"
  printf '# Every key: README "Configuration". Check it: docxy config check --config %s\n' "$CONFIG"
  case $mode in
    standalone)
      printf 'listen: "%s:443"\n' "$any_address"
      printf 'publicUrl: "%s"\n' "$public_url"
      printf 'dataDir: "%s"\n' "$DATA_DIR"
      printf 'tls:\n  cert: "%s"\n  key: "%s"\n' "$TLS_CERT" "$TLS_KEY"
      printf '# Plain HTTP: ACME challenges (acme.webroot), everything else moves to HTTPS.\n'
      printf 'httpRedirect:\n  listen: "%s:80"\n' "$any_address"
      ;;
    nginx)
      printf '# Behind nginx (%s): TLS there, cache hits sent by nginx from dataDir.\n' "$NGINX_SITE"
      printf 'listen: "%s"\n' "$DOCXY_BEHIND_NGINX"
      printf 'publicUrl: "%s"\n' "$public_url"
      printf 'dataDir: "%s"\n' "$DATA_DIR"
      printf 'trustedProxies: ["127.0.0.1"]\n'
      printf 'cache:\n  accelRedirect: { prefix: "%s" }\n' "$ACCEL_PREFIX"
      ;;
    http)
      printf '# Plain HTTP, an origin behind a CDN that terminates TLS for %s.\n' "$public_url"
      printf 'listen: "%s:80"\n' "$any_address"
      printf 'publicUrl: "%s"\n' "$public_url"
      printf 'dataDir: "%s"\n' "$DATA_DIR"
      printf "# trustedProxies: [\"203.0.113.0/24\"]   # the CDN's addresses: X-Forwarded-* believed from them\n"
      ;;
  esac
  if [[ -n $acme ]]; then
    printf '# certbot/acme.sh --webroot %s: docxy serves /.well-known/acme-challenge/ from it.\n' "$WEBROOT"
    printf 'acme:\n  webroot: "%s"\n' "$WEBROOT"
  fi
}
if [[ -f $CONFIG ]]; then
  say "keeping the config $CONFIG"
  if [[ -n $acme ]] && ! grep -q '^acme:' "$CONFIG"; then
    say "warning: $CONFIG has no acme section: add  acme: { webroot: \"$WEBROOT\" }  so that docxy answers the challenges"
  fi
else
  config_for_mode | write_file "$CONFIG" 0640 docxy
  say "new config: $CONFIG"
fi
if ((dry_run == 0)); then
  problems=$(docxy config check --config "$CONFIG" 2>&1 >/dev/null) || die "$CONFIG is not valid: $problems"
fi

# certbot's deploy hook, acme.sh's reload command: the new certificate where docxy reads it, then
# SIGHUP (and nginx reloaded).
renew_hook() {
  cat <<EOF
#!/bin/sh
# Written by docxy's install.sh: run by certbot (--deploy-hook) or acme.sh (--reloadcmd) once a
# certificate is issued or renewed. Puts it where docxy reads it and makes docxy reload it.
set -eu
tls_dir='$TLS_DIR'
if [ -n "\${RENEWED_LINEAGE:-}" ]; then
  # certbot: the new files are in its lineage directory.
  cp "\$RENEWED_LINEAGE/privkey.pem" "\$tls_dir/key.pem.new"
  cp "\$RENEWED_LINEAGE/fullchain.pem" "\$tls_dir/fullchain.pem.new"
  chmod 0640 "\$tls_dir/key.pem.new"
  chmod 0644 "\$tls_dir/fullchain.pem.new"
  mv -f "\$tls_dir/key.pem.new" "\$tls_dir/key.pem"
  mv -f "\$tls_dir/fullchain.pem.new" "\$tls_dir/fullchain.pem"
fi
EOF
  if ((on_system)); then
    cat <<'EOF'
# docxy reads the key as group docxy (acme.sh writes the files itself).
chgrp docxy "$tls_dir/key.pem"
chmod 0640 "$tls_dir/key.pem"
# SIGHUP (the unit's ExecReload): docxy loads the new certificate, connections stay up.
if systemctl is-active --quiet docxy; then systemctl reload docxy; fi
EOF
    if [[ $mode == nginx ]]; then
      printf 'if systemctl is-active --quiet nginx; then systemctl reload nginx; fi\n'
    fi
  fi
}
if [[ -n $acme ]]; then renew_hook | write_file "$RENEW_HOOK" 0755; fi

# The systemd unit.
render "$(template systemd/docxy.service)" "BIN=$BIN" "CONFIG=$CONFIG" "STATE_DIR=$STATE_DIR" | write_file "$UNIT" 0644
say "unit: $UNIT"
on_system systemctl daemon-reload

# The nginx site: the tested template (deploy/nginx/docxy.conf), then plain HTTP for ACME and
# the redirect.
nginx_site() {
  render "$(template nginx/docxy.conf)" "LISTEN=443 ssl" "SERVER_NAME=$domain" "DOCXY=$DOCXY_BEHIND_NGINX" \
    "DATA_DIR=$DATA_DIR" "TLS_CERT=$TLS_CERT" "TLS_KEY=$TLS_KEY"
  cat <<EOF

# Plain HTTP (install.sh): ACME http-01 challenges go to docxy, which serves them from its
# acme.webroot; everything else moves to HTTPS.
server {
    listen 80;
    server_name $domain;
    location /.well-known/acme-challenge/ {
        proxy_pass http://docxy;
        proxy_http_version 1.1;
        proxy_set_header Connection "";
        proxy_set_header Host \$host;
    }
    location / {
        return 301 https://$domain\$request_uri;
    }
}
EOF
}
if [[ $mode == nginx ]]; then
  make_dir "$(dirname "$NGINX_SITE")" 0755
  nginx_site | write_file "$NGINX_SITE" 0644
  say "nginx site: $NGINX_SITE"
  if ((on_system)); then
    # nginx's workers send cached blobs from dataDir: they read it as group docxy.
    nginx_user=$(sed -n 's/^[[:space:]]*user[[:space:]]\+\([^[:space:];]\+\).*/\1/p' /etc/nginx/nginx.conf 2>/dev/null | head -n 1)
    nginx_user=${nginx_user:-www-data}
    if id "$nginx_user" >/dev/null 2>&1; then on_system usermod -a -G docxy "$nginx_user"; fi
    on_system nginx -t -q
    on_system systemctl enable nginx
    on_system systemctl reload-or-restart nginx
  fi
fi

# Start (or restart after an upgrade) and wait for /health.
health_url() {
  local address port host scheme=http
  address=$(sed -n 's/^listen:[[:space:]]*["'\'']\{0,1\}\([^"'\''#[:space:]]*\).*/\1/p' "$CONFIG" | head -n 1)
  port=${address##*:}
  host=${address%:*}
  [[ $port =~ ^[0-9]+$ ]] || port=5000
  case $host in
    '' | 0.0.0.0 | '[::]' | "$address") host=127.0.0.1 ;;
  esac
  if grep -q '^tls:' "$CONFIG"; then scheme=https; fi
  printf '%s://%s:%s/health' "$scheme" "$host" "$port"
}

if ((no_start == 0)); then
  on_system systemctl enable docxy.service
  if ((dry_run == 0)) && systemctl is-active --quiet docxy.service; then
    if ((binary_changed)); then
      say "restarting docxy (upgraded)"
      systemctl restart docxy.service
    else
      systemctl reload docxy.service
    fi
  else
    on_system systemctl start docxy.service
  fi
  if ((dry_run == 0)); then
    url=$(health_url)
    say "waiting for $url"
    for attempt in $(seq 1 60); do
      if curl -fsk --max-time 2 -o /dev/null "$url"; then break; fi
      if ((attempt == 60)); then
        journalctl -u docxy.service -n 40 --no-pager >&2 || true
        die "docxy did not answer $url within 30 s (journalctl -u docxy)"
      fi
      sleep 0.5
    done
    say "docxy is up: $url"
  fi
fi

# The certificate from Let's Encrypt, in webroot mode: docxy (or nginx, passing to docxy) answers
# the challenge on port 80, the client renews by itself and calls the hook.
acme_commands() {
  local -a account=()
  case $acme in
    certbot)
      if [[ -n $email ]]; then account=(--email "$email"); else account=(--register-unsafely-without-email); fi
      printf '%q ' certbot certonly --webroot --webroot-path "$WEBROOT" -d "$domain" --non-interactive --agree-tos \
        "${account[@]}" --deploy-hook "$RENEW_HOOK"
      printf '\n'
      ;;
    acme.sh)
      if [[ -n $email ]]; then printf '%q ' acme.sh --register-account -m "$email" --server letsencrypt && printf '\n'; fi
      printf '%q ' acme.sh --issue -d "$domain" --webroot "$WEBROOT" --server letsencrypt
      printf '\n'
      printf '%q ' acme.sh --install-cert -d "$domain" --fullchain-file "$TLS_CERT" --key-file "$TLS_KEY" \
        --reloadcmd "$RENEW_HOOK"
      printf '\n'
      ;;
  esac
}
if [[ -n $acme ]]; then
  if ((no_start || dry_run)); then
    say "once docxy answers on port 80 for $domain, issue the certificate with:"
    acme_commands | sed 's/^/    /'
  else
    PATH="$PATH:$HOME/.acme.sh"
    if [[ $acme == acme.sh ]] && ! command -v acme.sh >/dev/null 2>&1; then
      die "acme.sh is not installed (https://github.com/acmesh-official/acme.sh), or use --acme certbot"
    fi
    say "issuing the certificate for $domain with $acme (webroot $WEBROOT)"
    while IFS= read -r command_line; do
      # acme.sh --issue exits 2 when the certificate is still valid: nothing to do.
      status=0
      eval "$command_line" || status=$?
      if ((status != 0)) && ! [[ $status == 2 && $acme == acme.sh ]]; then die "$acme failed ($status): $command_line"; fi
    done < <(acme_commands)
  fi
fi

# The client snippets, from the installed docxy.
if ((dry_run == 0)); then
  say "point clients at docxy (docxy client-config --for docker|containerd|podman|kubernetes):"
  for client in docker containerd podman; do
    docxy client-config --for "$client" --config "$CONFIG" || true
    printf '\n'
  done
fi

if ((no_start)); then
  say "not started. Start it with: $BIN serve --config $CONFIG${ROOT:+   (or systemctl enable --now docxy on the real system)}"
fi
if [[ $mode == nginx ]]; then say "done: $BIN, $CONFIG, $UNIT, $NGINX_SITE"; else say "done: $BIN, $CONFIG, $UNIT"; fi
