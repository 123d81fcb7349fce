#!/usr/bin/env bash
# Memory under hostile clients (a benchmark, not a test): Postrider and Debian's Postfix take
# the same load from bench/hostile.py on loopback, on a freshly started server for each case:
#
#   data-open      N connections each send EHLO, MAIL FROM, RCPT TO:<userI@relay.test>, DATA
#                  and a body of S octets in 64 KiB writes WITHOUT the final dot, stay open
#                  until every client has sent its body (and 2 s more), then all close.
#                  Also: bodies sent and how fast, connections the server closed or answered
#                  meanwhile, the server's RSS at that point.
#   data-complete  the same, each message ended with CRLF.CRLF and its reply counted by code
#                  (all stay open until the last reply is in).
#   auth-flood     N connections to a submission listener: EHLO, STARTTLS, EHLO, then at one
#                  moment (a barrier) each sends AUTH PLAIN as alice with a wrong password;
#                  replies counted by code (535, 454, ...) and errors. Meanwhile a probe opens
#                  a connection every 200 ms and times connect-to-220 plus the EHLO reply: its
#                  median and max under the flood (and at rest just before) are reported.
#
# For each server and case it prints: the peak RSS (Postrider: VmHWM; Postfix: the peak of the
# summed RSS of all its processes, master and descendants, sampled every 100 ms), the peak
# summed PSS (sampled about every second: summed RSS counts the pages Postfix's processes share
# once per process, PSS shares them out), the RSS 5 s after the clients closed, the case's wall
# time (the client run) and the case's own numbers; the whole table again at the end.
#
#   bench/hostile.sh [--cases LIST] [--only LIST] [--clients N] [--size BYTES]
#                    [--timeout S] [--postfix-procs N] [--port-base P] [--keep] [--no-build]
#
#   --cases LIST       comma-separated subset of data-open,data-complete,auth-flood (default all)
#   --only LIST        comma-separated subset of postrider,postfix (default both)
#   --clients N        hostile connections per case (default 1000)
#   --size BYTES       body size of the data cases (default 25M = 26214400; K, M, G: KiB, MiB, GiB)
#   --timeout S        bound on one case's client run, in seconds (default 3600); also the
#                      servers' idle and data timeouts, so that they do not end the hold early
#   --postfix-procs N  Postfix's smtpd process limit for the bench listeners (default clients +
#                      10, so every client is served at once; Postfix's own default is 100)
#   --port-base P      loopback ports P..P+3 (default 2630)
#   --keep             keep the work directory (configs, logs, client output; spools are
#                      always deleted)
#   --no-build         use target/release/postrider as it is (no cargo build)
#
# DISK: each data case writes clients x size octets, about 26 GB (24.4 GiB) with the defaults:
# Postrider spills arriving messages larger than 32 KiB to its spool's tmp/ and keeps the
# completed ones (deferred: they never leave), Postfix writes its incoming queue files. The
# script refuses to start if the work directory's (or Postfix's queue's) file system has less
# than twice that free.
#
# Postrider: a config with an smtp listener (relay.test is a local domain without a route, so
# its mail is deferred; nameservers 127.0.0.1:9, so no lookup leaves the machine either, and
# [authentication] verify = false, as every lookup would wait for the resolver's timeout) and
# a submission listener (self-signed certificate, password file with alice); connection
# limits clients + 10, max_message_size size + 1 MiB, [smtp_auth] without delay or lockout
# (delay_after = 100000, lockout_client = lockout_user = 0) so the flood measures the checks;
# everything else at its default (message_memory, max_concurrent_checks, max_waiting_checks).
# Postfix: relay_domains = relay.test, relay_transport and default_transport discard (nothing
# is delivered or bounced), message_size_limit size + 1 MiB, smtpd_timeout --timeout, no
# per-client connection limit, smtpd process limit --postfix-procs. Its auth-flood runs only
# if a SASL backend is already there (smtpd_sasl_auth_enable = yes in main.cf, or Dovecot's
# socket at private/auth), on a listener with STARTTLS required; this script installs none.
#
# Needs root for Postfix (installs Debian's postfix when missing, reconfigures and starts the
# system Postfix; main.cf and master.cf are restored on exit; refuses if its queue is not
# empty, and empties it of the bench's messages on exit), python3 >= 3.11, openssl. Raises
# the open-files limit (ulimit -n) for the servers and the clients. Loopback only.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

all_cases="data-open,data-complete,auth-flood"; all_servers="postrider,postfix"
cases_arg=$all_cases; only=$all_servers; clients=1000; size_arg=25M; timeout=3600
pf_procs=""; port_base=2630; keep=0; build=1
hold=2                # seconds all connections stay open after the last body
settle=5              # seconds between the clients closing and the "after" RSS

die() { echo "hostile.sh: $*" >&2; exit 1; }
usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; }
while [ $# -gt 0 ]; do
  case $1 in
    --cases) cases_arg=${2:?}; shift ;;
    --only) only=${2:?}; shift ;;
    --clients) clients=${2:?}; shift ;;
    --size) size_arg=${2:?}; shift ;;
    --timeout) timeout=${2:?}; shift ;;
    --postfix-procs) pf_procs=${2:?}; shift ;;
    --port-base) port_base=${2:?}; shift ;;
    --keep) keep=1 ;;
    --no-build) build=0 ;;
    -h|--help) usage; exit 0 ;;
    *) usage >&2; die "unknown argument $1" ;;
  esac
  shift
done
[[ $clients =~ ^[1-9][0-9]*$ ]] || die "--clients needs a positive number"
[[ $timeout =~ ^[1-9][0-9]*$ ]] || die "--timeout needs a positive number of seconds"
[[ $port_base =~ ^[1-9][0-9]*$ ]] || die "--port-base needs a port number"
[ "$port_base" -le 65532 ] || die "--port-base needs a port number up to 65532"
size=$(numfmt --from=iec "$size_arg" 2>/dev/null || true)
[[ $size =~ ^[1-9][0-9]*$ ]] || die "--size needs a positive number of octets (K, M, G suffixes allowed), not $size_arg"
[ -n "$pf_procs" ] || pf_procs=$((clients + 10))
[[ $pf_procs =~ ^[1-9][0-9]*$ ]] || die "--postfix-procs needs a positive number"
cases=(); servers=()
for c in ${cases_arg//,/ }; do
  [[ ",$all_cases," == *",$c,"* ]] || die "unknown case $c (known: $all_cases)"
  cases+=("$c")
done
for s in ${only//,/ }; do
  [[ ",$all_servers," == *",$s,"* ]] || die "unknown server $s (known: $all_servers)"
  servers+=("$s")
done
[ ${#cases[@]} -gt 0 ] || die "--cases selected no case"
[ ${#servers[@]} -gt 0 ] || die "--only selected no server"
wants() { [[ " ${servers[*]} " == *" $1 "* ]]; }
wants_case() { [[ " ${cases[*]} " == *" $1 "* ]]; }
wants_data() { wants_case data-open || wants_case data-complete; }

pr_port=$port_base; pr_sub_port=$((port_base + 1)); pf_port=$((port_base + 2)); pf_sub_port=$((port_base + 3))
max_msg=$((size + 1048576))
disk_need=$((2 * clients * size))
unset RUST_BACKTRACE RUST_LIB_BACKTRACE

# ------------------------------------------------------------------ prerequisites
[ "${BASH_VERSINFO[0]}" -ge 5 ] || die "needs bash 5 (EPOCHREALTIME)"
command -v python3 >/dev/null || die "needs python3"
python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))' || die "needs python3 >= 3.11 (asyncio.timeout, StreamWriter.start_tls)"
command -v openssl >/dev/null || die "needs openssl (the submission listener's certificate)"
if wants postfix; then
  [ "$(id -u)" -eq 0 ] || die "needs root for Postfix (installs and reconfigures the system's Postfix), or --only postrider"
  if ! command -v postfix >/dev/null; then
    echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends postfix >/dev/null 2>&1 || {
      apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends postfix >/dev/null; } \
      || die "installing postfix failed"
  fi
fi
ports=(); wants postrider && ports+=("$pr_port" "$pr_sub_port"); wants postfix && ports+=("$pf_port" "$pf_sub_port")
for p in "${ports[@]}"; do
  ! ss -Hltn "sport = :$p" | grep -q . || die "port $p is in use (--port-base to move)"
done
# Each connection: a socket in the client, a socket and (Postrider) a spill file in the server.
nofile=$((clients * 4 + 1024))
if [ "$(ulimit -Sn)" != unlimited ] && [ "$(ulimit -Sn)" -lt "$nofile" ]; then
  if [ "$(ulimit -Hn)" = unlimited ] || [ "$(ulimit -Hn)" -ge "$nofile" ]; then
    ulimit -Sn "$nofile"
  else
    ulimit -n "$nofile" 2>/dev/null || die "cannot raise the open-files limit to $nofile (hard limit $(ulimit -Hn)): run as root or lower --clients"
  fi
fi

postrider_bin=$root/target/release/postrider
if wants postrider; then
  if [ "$build" = 1 ]; then
    build_log=$(mktemp)
    echo "building postrider (release)..."
    cargo build --release --locked -p postrider >"$build_log" 2>&1 || { tail -30 "$build_log"; rm -f "$build_log"; die "cargo build failed"; }
    rm -f "$build_log"
  fi
  [ -x "$postrider_bin" ] || die "$postrider_bin is missing (run without --no-build)"
fi

# ------------------------------------------------------------------ work dir, cleanup
work=$(mktemp -d /var/tmp/postrider-hostile.XXXXXX)
mkdir -p "$work/runs"
pr=$work/postrider
srv=""; srv_pid=""; sampler_pid=""; fg_pid=""
postfix_was_running=0; postfix_touched=0; pf_queue_was_empty=0

# shellcheck source=bench/lib.sh
. bench/lib.sh
cleanup() {
  set +e
  trap - INT TERM
  [ -n "$fg_pid" ] && stop_pid "$fg_pid" 5
  [ -n "$sampler_pid" ] && stop_pid "$sampler_pid" 5
  [ -n "$srv" ] && stop_server
  if [ "$postfix_touched" = 1 ]; then
    postfix stop >/dev/null 2>&1
    # The queue was empty before the bench: whatever is in it now is the bench's, and must
    # not meet the restored configuration.
    [ "$pf_queue_was_empty" = 1 ] && postsuper -d ALL >/dev/null 2>&1
    restore_postfix
  fi
  rm -rf "$pr/spool"
  if [ "$keep" = 1 ]; then echo "work directory kept: $work"; else rm -rf "$work"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

human() { numfmt --to=iec-i --suffix=B "$1"; }
check_disk() { # dir what
  local avail
  avail=$(df --output=avail -B1 "$1" | tail -1 | tr -d ' ')
  [ "$avail" -ge "$disk_need" ] || die "$2: the data cases write clients x size = $(human $((clients * size))) to the file system of $1, which has $(human "$avail") free, less than twice that; lower --clients or --size, or run --cases auth-flood"
}

# ------------------------------------------------------------------ certificate, Postrider
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
  -subj /CN=relay.bench.test -keyout "$work/key.pem" -out "$work/cert.pem" >/dev/null 2>&1 \
  || die "openssl could not make a self-signed certificate"
chmod 600 "$work/key.pem"

if wants postrider; then
  wants_data && check_disk "$work" postrider
  mkdir -p "$pr"
  printf 'alice:%s\n' "$(printf '%s\n' "bench-alice-$$" | "$postrider_bin" hash-password)" >"$pr/passwords" \
    || die "postrider hash-password failed"
  cat >"$pr/postrider.toml" <<TOML
# Written by bench/hostile.sh.
hostname = "relay.bench.test"
spool_dir = "$pr/spool"
admin_socket = "$pr/admin.sock"

[[listener]]
name = "smtp"
address = "127.0.0.1:$pr_port"
kind = "smtp"

[[listener]]
name = "submission"
address = "127.0.0.1:$pr_sub_port"
kind = "submission"
tls_cert = "$work/cert.pem"
tls_key = "$work/key.pem"

# relay.test has no [[route]]: its mail is deferred and stays in the spool.
[relay]
local_domains = ["relay.test"]
relay_networks = []
passwords = "$pr/passwords"

[limits]
max_connections = $((clients + 10))
max_connections_per_ip = $((clients + 10))
max_message_size = $max_msg

# Long enough that no connection is timed out while the others are still sending.
[timeouts]
command = $timeout
data_block = $timeout
data_total = $timeout

# No delays or lockouts: every AUTH goes to a password check (or gets 454 when too many wait).
[smtp_auth]
delay_after = 100000
lockout_client = 0
lockout_user = 0

# Nothing answers on port 9: no lookup leaves the machine.
[dns]
nameservers = ["127.0.0.1:9"]

# With no DNS every SPF and DKIM lookup would wait for the resolver's timeout (and Postfix
# verifies nothing either).
[authentication]
verify = false

[plugins]
cache_dir = "$pr/plugin-cache"
kv_path = "$pr/kv.redb"
TOML
  "$postrider_bin" check-config "$pr/postrider.toml" >/dev/null || die "the generated Postrider config is not valid"
fi

# ------------------------------------------------------------------ Postfix
pf_auth=0    # 1: a SASL backend is there, auth-flood runs against Postfix
pf_sasl=""   # smtpd options naming it, when main.cf does not
if wants postfix; then
  # Debian's "No configuration" install has no main.cf; postconf needs one.
  [ -f /etc/postfix/main.cf ] || touch /etc/postfix/main.cf
  pf_queue=$(postconf -h queue_directory)
  if wants_case auth-flood; then
    if [ "$(postconf -h smtpd_sasl_auth_enable)" = yes ]; then
      sasl_type=$(postconf -h smtpd_sasl_type); sasl_path=$(postconf -h smtpd_sasl_path)
      case $sasl_type:$sasl_path in
        dovecot:inet:*) pf_auth=1 ;;
        dovecot:/*) [ -S "$sasl_path" ] && pf_auth=1 ;;
        dovecot:*) [ -S "$pf_queue/$sasl_path" ] && pf_auth=1 ;;
        cyrus:*) postconf -a | grep -qx cyrus && pf_auth=1 ;;
      esac
    elif postconf -a | grep -qx dovecot && [ -S "$pf_queue/private/auth" ]; then
      pf_auth=1; pf_sasl=" -o smtpd_sasl_type=dovecot -o smtpd_sasl_path=private/auth"
    fi
  fi
  take_over_postfix
  # (The queue directories do not exist before Postfix first starts.)
  leftover=$( (find "$pf_queue"/{incoming,active,deferred,hold,maildrop} -type f 2>/dev/null || true) | wc -l)
  [ "$leftover" -eq 0 ] || die "Postfix's queue holds $leftover messages; empty it first (postsuper -d ALL)"
  pf_queue_was_empty=1
  wants_data && check_disk "$pf_queue" postfix
  # Loopback only; mail for relay.test accepted from anyone, and everything discarded.
  postconf -e "inet_interfaces = loopback-only" "mydestination =" "mynetworks = 127.0.0.0/8" \
    "relay_domains = relay.test" "relayhost =" "relay_transport = discard" \
    "default_transport = discard" "smtpd_client_restrictions =" \
    "smtpd_client_connection_count_limit = 0" "message_size_limit = $max_msg" \
    "mailbox_size_limit = 0" "virtual_mailbox_limit = 0" \
    "smtpd_timeout = ${timeout}s" "maillog_file = /var/log/postfix-bench.log" \
    "compatibility_level = 3.6"
  postconf -M "$pf_port/inet=$pf_port inet n - n - $pf_procs smtpd"
  if [ "$pf_auth" = 1 ]; then
    postconf -M "$pf_sub_port/inet=$pf_sub_port inet n - n - $pf_procs smtpd -o smtpd_tls_security_level=encrypt -o smtpd_tls_cert_file=$work/cert.pem -o smtpd_tls_key_file=$work/key.pem -o smtpd_tls_auth_only=yes -o smtpd_sasl_auth_enable=yes$pf_sasl"
  fi
  postfix check >/dev/null 2>&1 || die "postfix check failed"
fi

# ------------------------------------------------------------------ start, stop, measure
start_server() { # name; sets srv, srv_pid (the process whose tree is measured)
  srv=$1
  case $1 in
    postrider)
      rm -rf "$pr/spool" "$pr/out"
      "$postrider_bin" serve --no-watch --config "$pr/postrider.toml" >"$pr/out" 2>>"$pr/log" &
      srv_pid=$!
      wait_until 120 grep -q "postrider: ready" "$pr/out" || { echo "postrider did not start: $(tail -3 "$pr/log")"; return 1; } ;;
    postfix) start_postfix ;;
  esac
}
stop_server() {
  case $srv in
    postfix) stop_postfix "$srv_pid" ;;
    *) stop_pid "$srv_pid" 40 ;;
  esac
  srv=""; srv_pid=""
}
pf_drained() { [ "$(postfix_queued)" -eq 0 ]; }
mib() { awk -v k="$1" 'BEGIN { if (k == "") print "-"; else printf "%.0f", k / 1024 }'; }

shopt -s nullglob
rows=(); any_error=0
add_row() { # server case peak_kb pss_kb after_kb wall details
  local line
  [[ $7 != *ERROR:* ]] || any_error=1
  line=$(printf '%-10s %-14s %9s %9s %9s %8s  %s' "$1" "$2" "$(mib "$3")" "$(mib "$4")" "$(mib "$5")" "$6" "$7")
  rows+=("$line")
  echo "$line"
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$@" >>"$work/results.tsv"
}
header() { printf '%-10s %-14s %9s %9s %9s %8s  %s\n' server case "peak RSS" "peak PSS" "RSS +5s" "wall s" "(MiB; details)"; }

run_case() { # server case
  local s=$1 c=$2 dir=$work/runs/$1-$2 port err="" rc=0 t0 t1 wall peak="" p="" pss="" after="" details
  mkdir -p "$dir"
  if [ "$c" = auth-flood ] && [ "$s" = postfix ] && [ "$pf_auth" = 0 ]; then
    echo "postfix: auth-flood skipped (no SASL backend configured)"
    add_row "$s" "$c" "" "" "" "-" "skipped (no SASL backend configured)"
    return
  fi
  case $s:$c in
    postrider:auth-flood) port=$pr_sub_port ;;
    postrider:*) port=$pr_port ;;
    postfix:auth-flood) port=$pf_sub_port ;;
    postfix:*) port=$pf_port ;;
  esac
  if ! start_server "$s" >"$dir/start.err" 2>&1; then
    err=$(tail -1 "$dir/start.err")
    stop_server
    add_row "$s" "$c" "" "" "" "-" "ERROR: ${err:-start failed}"
    return
  fi
  python3 "$root/bench/compare/rss_peak.py" "$srv_pid" 0.1 "$dir/peak" &
  sampler_pid=$!
  t0=$EPOCHREALTIME
  run_fg timeout --kill-after=10 $((timeout + 120)) python3 "$root/bench/hostile.py" "$c" \
    --port "$port" --clients "$clients" --size "$size" --domain relay.test --user alice \
    --timeout "$timeout" --hold "$hold" --pid "$srv_pid" --json "$dir/client.json" \
    >"$dir/client.out" 2>"$dir/client.err" || rc=$?
  t1=$EPOCHREALTIME
  wall=$(awk -v a="$t0" -v b="$t1" 'BEGIN {printf "%.1f", b - a}')
  case $rc in
    0) ;;
    124|137) err="the client was killed after $((timeout + 120)) s" ;;
    *) err="client exited with $rc: $(tail -1 "$dir/client.err" 2>/dev/null)" ;;
  esac
  sleep "$settle"
  if alive "$srv_pid"; then
    if [ "$s" = postrider ]; then
      after=$(awk '/^VmRSS:/ {print $2}' "/proc/$srv_pid/status" 2>/dev/null || true)
      peak=$(awk '/^VmHWM:/ {print $2}' "/proc/$srv_pid/status" 2>/dev/null || true)
    else
      read -r after _ < <(python3 "$root/bench/hostile.py" rss "$srv_pid") || true
    fi
  else
    err="${err:+$err; }$s exited during the case"
  fi
  stop_pid "$sampler_pid" 5; sampler_pid=""
  read -r p pss <"$dir/peak" 2>/dev/null || true
  if [ "$s" != postrider ] || [ -z "$peak" ]; then peak=$p; fi
  if [ "$s" = postfix ] && [ "$c" = data-complete ] && ! wait_until 300 pf_drained; then
    err="${err:+$err; }Postfix's queue still held $(postfix_queued) messages 300 s after the case"
  fi
  stop_server
  rm -rf "$pr/spool"
  details=$(head -1 "$dir/client.out" 2>/dev/null || true)
  add_row "$s" "$c" "$peak" "$pss" "$after" "$wall" "${details:-no client output}${err:+; ERROR: $err}"
}

# ------------------------------------------------------------------ the cases
echo "hostile clients: ${cases[*]} against ${servers[*]}; $clients clients, bodies of $size octets; work dir $work"
wants_data && echo "the data cases write $(human $((clients * size))) to disk each"
printf 'server\tcase\tpeak_rss_kb\tpeak_pss_kb\trss_after_kb\twall_s\tdetails\n' >"$work/results.tsv"
header
for c in "${cases[@]}"; do
  for s in "${servers[@]}"; do
    run_case "$s" "$c"
  done
done
echo
header
printf '%s\n' "${rows[@]}"
[ "$any_error" = 0 ] || { echo "some cases failed: see ERROR above" >&2; exit 1; }
