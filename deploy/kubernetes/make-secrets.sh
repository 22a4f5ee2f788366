#!/bin/sh
# Writes what the Kubernetes Secrets are made from, into deploy/kubernetes/secrets/ (or the folder
# given with --dir), keeping whatever is there already: run it again and nothing changes.
#
#   deploy/kubernetes/make-secrets.sh                                   # in-cluster PostgreSQL
#   deploy/kubernetes/make-secrets.sh --database-url postgresql://u:p@db:5432/encoders   # external-db
#
#   keys/               `encoders keys init`: a CurveZMQ key pair per role, the core's allow-list
#   web-token           the web viewer's token
#   postgres-password   the in-cluster PostgreSQL's password
#   database-url        postgresql://encoders:<that password>@postgres:5432/encoders, or --database-url
#
# It needs the `encoders` command (pip install encoders, or .venv/bin after `make venv`; ENCODERS=...
# names another) and python3. None of these files is committed (secrets/.gitignore); keep them as
# you keep the cluster's other secrets. New keys: remove keys/, run this again, apply again (every
# pod that holds a key is rolled, since the Secrets' names carry a hash of their contents).
set -eu
here=$(cd "$(dirname "$0")" && pwd)
dir="$here/secrets"
url=
while [ $# -gt 0 ]; do
    case "$1" in
        --dir) dir=$2; shift 2 ;;
        --database-url) url=$2; shift 2 ;;
        -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
        *) echo "unknown argument: $1 (--dir DIR, --database-url URL)" >&2; exit 2 ;;
    esac
done
ENCODERS=${ENCODERS:-encoders}
umask 077
mkdir -p "$dir"
"$ENCODERS" keys init "$dir/keys" --if-missing
token() { python3 -c 'import secrets; print(secrets.token_urlsafe(24), end="")'; }
[ -s "$dir/web-token" ] || token > "$dir/web-token"
[ -s "$dir/postgres-password" ] || token > "$dir/postgres-password"
if [ -n "$url" ]; then
    printf '%s' "$url" > "$dir/database-url"
elif [ ! -s "$dir/database-url" ]; then
    printf 'postgresql://encoders:%s@postgres:5432/encoders' "$(cat "$dir/postgres-password")" > "$dir/database-url"
fi
echo "secrets in $dir; the web viewer's token: $(cat "$dir/web-token")"
