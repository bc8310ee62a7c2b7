#!/usr/bin/env bash
# Make everything the site's Mosquitto needs to know who is who: a site CA, the broker's TLS
# certificate, one MQTT user per role with a random password, and the ACL.
#
#   deploy/make-site-credentials.sh [options] SITE OUTDIR
#
#   --operator NAME   an operator account, the only kind that may command the plant (repeat it;
#                     at least one). Its commands go to {prefix}/SITE/control/cmd/NAME.
#   --host NAME       a DNS name or IP address clients use to reach the broker, written into the
#                     server certificate (repeat it; default: this machine's name, localhost,
#                     127.0.0.1)
#   --prefix P        mqtt.topic_prefix of the site file (default: heat)
#   --days N          validity of the certificates in days (default: 825)
#
# OUTDIR must not exist or be empty. It receives:
#
#   ca.crt                  the site CA: every client checks the broker with it (mqtt.tls.ca_file)
#   server.crt, server.key  the broker's certificate and key (mosquitto.conf: certfile, keyfile)
#   passwd                  Mosquitto's password file: gateway, historian, each operator (hashed)
#   acl                     deploy/mosquitto-acl.in rendered for SITE and the operators
#   private/ca.key          the CA's key: keep it off the broker box (only needed for a new
#                           server certificate)
#   private/USER.password   each user's password (0600): put it where that client reads it,
#                           then delete the file
#
# Needs openssl and mosquitto_passwd (Debian: openssl, mosquitto). Passwords go to
# mosquitto_passwd on its standard input, never on a command line (where `ps` would show them).
# deploy/README.md, section 3, shows where each file goes.

set -euo pipefail

usage() {
    sed -n '2,/^$/s/^# \{0,1\}//p' "$0" >&2
    exit 2
}

fail() {
    printf 'make-site-credentials: %s\n' "$*" >&2
    exit 2
}

here=$(cd "$(dirname "$0")" && pwd)
operators=()
hosts=()
prefix=heat
days=825
while [ $# -gt 0 ]; do
    case $1 in
        --operator) [ $# -ge 2 ] || usage; operators+=("$2"); shift 2 ;;
        --host) [ $# -ge 2 ] || usage; hosts+=("$2"); shift 2 ;;
        --prefix) [ $# -ge 2 ] || usage; prefix=$2; shift 2 ;;
        --days) [ $# -ge 2 ] || usage; days=$2; shift 2 ;;
        -h | --help) usage ;;
        --*) fail "unknown option $1 (see --help)" ;;
        *) break ;;
    esac
done
[ $# -eq 2 ] || usage
site=$1
out=$2

# Names end up in topics and in the ACL, one per line: no wildcards, separators or spaces.
[[ $site =~ ^[a-z0-9][a-z0-9_-]*$ ]] || fail "site '$site': use lower-case letters, digits, _ and - (as in site.yaml)"
[[ $prefix =~ ^[A-Za-z0-9_-]+$ ]] || fail "prefix '$prefix': use letters, digits, _ and -"
[[ $days =~ ^[1-9][0-9]*$ ]] || fail "days '$days': a whole number of days"
[ ${#operators[@]} -gt 0 ] || fail "name at least one --operator (the only accounts that may command the plant)"
for user in "${operators[@]}"; do
    [[ $user =~ ^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$ ]] || fail "operator '$user': use letters, digits, ., _ and - (at most 64)"
    case $user in gateway | historian) fail "operator '$user': that name is taken by a service account" ;; esac
done
if [ -n "$(printf '%s\n' "${operators[@]}" | sort | uniq -d)" ]; then
    fail "an operator is named twice"
fi
if [ ${#hosts[@]} -eq 0 ]; then
    hosts=("$(hostname -f 2>/dev/null || hostname)" localhost 127.0.0.1)
fi
if [ -e "$out" ] && [ -n "$(ls -A "$out")" ]; then
    fail "$out is not empty: refusing to replace a site's CA and passwords (use a new folder)"
fi
command -v openssl >/dev/null || fail "openssl not found (apt-get install openssl)"
passwd_tool=${MOSQUITTO_PASSWD:-$(command -v mosquitto_passwd || true)}
[ -n "$passwd_tool" ] || fail "mosquitto_passwd not found (apt-get install mosquitto)"
[ -r "$here/mosquitto-acl.in" ] || fail "$here/mosquitto-acl.in is missing"

umask 077
mkdir -p "$out/private"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# -- TLS: a CA for this site, and the broker's certificate signed by it ---------------------
san=""
for host in "${hosts[@]}"; do
    if [[ $host =~ ^[0-9.]+$ || $host == *:* ]]; then san+="${san:+,}IP:$host"; else san+="${san:+,}DNS:$host"; fi
done
openssl req -x509 -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -sha256 -days "$days" \
    -keyout "$out/private/ca.key" -out "$out/ca.crt" -subj "/CN=heat-gateway $site CA" \
    -addext "basicConstraints=critical,CA:TRUE,pathlen:0" -addext "keyUsage=critical,keyCertSign,cRLSign" \
    2>"$tmp/openssl.log" || { cat "$tmp/openssl.log" >&2; fail "openssl could not make the CA"; }
openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -sha256 \
    -keyout "$out/server.key" -out "$tmp/server.csr" -subj "/CN=${hosts[0]}" \
    2>"$tmp/openssl.log" || { cat "$tmp/openssl.log" >&2; fail "openssl could not make the server key"; }
printf 'subjectAltName=%s\nextendedKeyUsage=serverAuth\nbasicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\n' \
    "$san" >"$tmp/server.ext"
openssl x509 -req -sha256 -days "$days" -in "$tmp/server.csr" -CA "$out/ca.crt" -CAkey "$out/private/ca.key" \
    -set_serial "0x$(openssl rand -hex 16)" -extfile "$tmp/server.ext" -out "$out/server.crt" \
    2>"$tmp/openssl.log" || { cat "$tmp/openssl.log" >&2; fail "openssl could not sign the server certificate"; }

# -- users: one per role, random passwords ----------------------------------------------------
: >"$out/passwd"
for user in gateway historian "${operators[@]}"; do
    password=$(openssl rand -base64 32 | tr -d '/+=\n' | cut -c1-32)
    printf '%s\n' "$password" >"$out/private/$user.password"
    printf '%s\n%s\n' "$password" "$password" | "$passwd_tool" "$out/passwd" "$user" >/dev/null 2>"$tmp/passwd.log" \
        || { cat "$tmp/passwd.log" >&2; fail "mosquitto_passwd could not add $user"; }
done

# -- the ACL: the template with the site filled in, its operator block once per operator ------
awk -v prefix="$prefix" -v site="$site" -v ops="${operators[*]}" '
    function fill(line, user) {
        gsub(/@PREFIX@/, prefix, line); gsub(/@SITE@/, site, line); gsub(/@USER@/, user, line)
        return line
    }
    /^# >>> operator/ { in_block = 1; next }
    /^# <<< operator/ {
        n = split(ops, names, " ")
        for (i = 1; i <= n; i++) {
            for (j = 1; j <= lines; j++) print fill(block[j], names[i])
            if (i < n) print ""
        }
        in_block = 0; next
    }
    in_block { block[++lines] = $0; next }
    { print fill($0, "") }
' "$here/mosquitto-acl.in" >"$out/acl"

chmod 0644 "$out/ca.crt" "$out/server.crt" "$out/acl"
chmod 0640 "$out/server.key" "$out/passwd"
if [ "$(id -u)" = 0 ] && getent group mosquitto >/dev/null; then
    chgrp mosquitto "$out/server.key" "$out/passwd"  # Mosquitto reads them after dropping root
fi

printf 'made %s for site %s: users gateway, historian, %s; certificate for %s\n' \
    "$out" "$site" "${operators[*]}" "${hosts[*]}"
