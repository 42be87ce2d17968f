#!/usr/bin/env bash
# What a hub's version row costs the PostgreSQL server, by its parts.
#
# Server-side only (the rows are made by generate_series inside the
# server: no client, no driver, no encoding): 50 000 contacts-like rows in
# 100 transactions of 500, written as upserts the way a push writes them,
# into
#   users      the users' table alone (the raw baseline),
#   vals       a version table as the hub keeps it today: key, clocks
#              (44 bytes), values (190 bytes), live, hub_seq (unique
#              index), owner, sole,
#   no-vals    the same without the values (step 2d's version row),
#   no-index   with the values, without the index on hub_seq.
# Each is timed RUNS times, alternating, into emptied tables; the medians
# are printed, and each against `users`.
#
#   TIDESYNC_TEST_POSTGRES=postgres://postgres@127.0.0.1:5432/test \
#     benches/version-row-cost.sh [RUNS]
set -euo pipefail
url=${TIDESYNC_TEST_POSTGRES:?set TIDESYNC_TEST_POSTGRES to a PostgreSQL URL}
runs=${1:-3}
db="tsvrc_$$"
base=${url%/*}
psql -qX "$url" -c "create database $db" >/dev/null
trap 'psql -qX "$url" -c "drop database if exists $db" >/dev/null' EXIT
u="$base/$db"
dir=$(mktemp -d)
trap 'rm -rf "$dir"; psql -qX "$url" -c "drop database if exists $db" >/dev/null' EXIT

version_table() {
  echo "create table $1(id uuid primary key, clocks bytea not null, del bytea,
    vals bytea not null, live boolean not null, hub_seq bigint, owner text, sole varchar(32));"
}
{
  echo "create table users(id uuid primary key, name text not null, email text, phone text,
    company text not null, notes text not null, updated_at timestamptz not null);"
  version_table vals; echo "create unique index vals_hs on vals(hub_seq);"
  version_table novals; echo "create unique index novals_hs on novals(hub_seq);"
  version_table noindex
} | psql -qX "$u" >/dev/null

gen() { # table, select list
  for b in $(seq 0 99); do
    lo=$((b * 500)); hi=$((lo + 499))
    echo "insert into $1 select $2 from generate_series($lo, $hi) i on conflict (id) do update set $3;"
  done
}
users_cols="md5(i::text)::uuid, 'name '||i, 'user'||i||'@example.com', '+1 555 '||i,
  'Company '||(i % 100), repeat('note ', 8)||i, now()"
users_set="name = excluded.name, email = excluded.email, phone = excluded.phone,
  company = excluded.company, notes = excluded.notes, updated_at = excluded.updated_at"
vr_set="clocks = excluded.clocks, del = excluded.del, vals = excluded.vals, live = excluded.live,
  hub_seq = excluded.hub_seq, owner = excluded.owner, sole = excluded.sole"
vr_cols() { echo "md5(i::text)::uuid, decode(repeat('ab', 44), 'hex'), null, $1, true, i, null, null"; }
gen users "$users_cols" "$users_set" > "$dir/users.sql"
gen vals "$(vr_cols "decode(repeat('cd', 190), 'hex')")" "$vr_set" > "$dir/vals.sql"
gen novals "$(vr_cols "''::bytea")" "$vr_set" > "$dir/no-vals.sql"
gen noindex "$(vr_cols "decode(repeat('cd', 190), 'hex')")" "$vr_set" > "$dir/no-index.sql"

kinds="users vals no-vals no-index"
for r in $(seq 1 "$runs"); do
  for k in $kinds; do
    psql -qX "$u" -c "truncate users, vals, novals, noindex" -c "checkpoint" >/dev/null
    s=$(date +%s%N)
    psql -qX "$u" -f "$dir/$k.sql" >/dev/null
    e=$(date +%s%N)
    echo "$k $(( (e - s) / 1000000 ))" >> "$dir/times"
  done
done
median() { grep "^$1 " "$dir/times" | awk '{print $2}' | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
ref=$(median users)
echo "50 000 rows, 500 per transaction, medians of $runs runs (ms; against users' rows alone)"
for k in $kinds; do
  m=$(median "$k")
  printf '%-9s %6d ms  %5.2fx  (runs: %s)\n' "$k" "$m" "$(echo "$m / $ref" | bc -l)" \
    "$(grep "^$k " "$dir/times" | awk '{printf "%s ", $2}')"
done
