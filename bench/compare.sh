#!/usr/bin/env bash
# Side by side on one machine (issue 10): Postrider without plugins ("postrider"), Postrider
# with three example plugins ("postrider-3p": dnsbl at connect against a local dnsmasq zone
# that answers NXDOMAIN, rcpt-allowlist at RCPT, header-stamp at DATA; each transaction gets
# fresh plugin instances, the default), the same with warm instances ("postrider-3p-warm":
# `reuse = 100` on each plugin, see plugins/README.md), Debian's Postfix as a
# relay (relayhost to the sink) and Haraka from npm (one JS rcpt-allowlist plugin,
# queue/smtp_forward to the sink). All relay to the same Postfix smtp-sink on loopback.
# Verified TLS (issue 18): "postrider-verify" (route `tls = "verify"`) and "postfix-verify"
# (`smtp_tls_security_level = verify`, TLS session cache, `smtp_tls_connection_reuse` through
# tlsproxy) relay to postrider-sink instead, a discarding receiver with STARTTLS whose
# certificate comes from a CA made at its start; it counts TLS handshakes and resumed ones.
# Spam filtering (issue 19): "postrider-rspamd" (the rspamd plugin, HTTP /checkv2 by grant),
# "postrider-milter" (a [[milter]] entry to rspamd's proxy in milter mode), "postfix-rspamd"
# (smtpd_milters to that proxy) and "haraka-rspamd" (haraka-plugin-rspamd from npm, HTTP
# /checkv2) against one rspamd started for the run (Debian's package, its shipped rules, DNS to
# a closed port), all relaying to smtp-sink; the CPU time rspamd spent in each run is recorded.
#
# Each cell (sessions x message size x connection mode) runs every server in turn, run by
# run (A B C D, A B C D, ...), each run on a freshly started server: an untimed warm-up with
# smtp-source, then
#   1. smtp-source: msgs/s end to end, from the first connection until the relay's queue is
#      empty again (Haraka has no queue: smtp_forward answers 250 only once the sink has);
#   2. postrider-loadgen with the same load: p50/p99 latency per message.
# Peak RSS: Postrider's VmHWM; Postfix and Haraka: the peak of the summed RSS of all their
# processes, sampled every 100 ms (and their summed PSS, every second). Medians over the runs
# go to bench/RESULTS.md, with the machine description and every run in raw form.
#
#   bench/compare.sh [--quick] [--runs N] [--only LIST] [--sessions "20 100"]
#                    [--sizes "4096 102400"] [--modes "new reuse"] [--messages N]
#                    [--quiet-logs] [--port-base P] [--out FILE] [--keep] [--no-build]
#
#   --quick        200 messages per pass, 1 run: checks that every cell works, measures nothing
#   --runs N       runs per server and cell (default 3; the median is reported)
#   --only LIST    comma-separated subset of postrider,postrider-3p,postrider-3p-warm,postfix,haraka,
#                  postrider-verify,postfix-verify,postrider-rspamd,postrider-milter,postfix-rspamd,
#                  haraka-rspamd (default: the first five)
#   --messages N   messages per pass (default 10000 at 4 KiB, 2000 at 100 KiB)
#   --quiet-logs   Postrider and Haraka log warnings only (default: their default level,
#                  info, to a file, as Postfix logs every message to its maillog_file)
#   --port-base P  loopback ports P..P+14 (default 2610)
#   --keep         keep the work directory (configs, logs, raw output)
#   --no-build     use the binaries and plugins already in target/ (no cargo build)
#
# Needs root: installs Debian's postfix (and dnsmasq-base) when missing, reconfigures and
# starts the system Postfix (main.cf and master.cf are restored on exit) and installs Haraka
# from npm into bench/.haraka (needs node >= 20). Loopback only. Meaningless while anything
# else loads the machine (the results record `pgrep -c rustc` at every run).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
ORIG_ARGS=("$@")

all_servers="postrider,postrider-3p,postrider-3p-warm,postfix,haraka,postrider-verify,postfix-verify,postrider-rspamd,postrider-milter,postfix-rspamd,haraka-rspamd"
runs=3; runs_set=0; quick=0; only="postrider,postrider-3p,postrider-3p-warm,postfix,haraka"; sessions_list="20 100"; sizes="4096 102400"
modes="new reuse"; messages=""; quiet_logs=0; port_base=2610; out=bench/RESULTS.md; keep=0
build=1
drain_limit=900       # seconds a queue may take to empty after a pass
pass_limit=1800       # seconds one smtp-source or loadgen pass may take
haraka_version=3.3.4
haraka_dir=bench/.haraka
haraka_rspamd_version=1.6.1

die() { echo "compare.sh: $*" >&2; exit 1; }
usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; }
while [ $# -gt 0 ]; do
  case $1 in
    --quick) quick=1 ;;
    --runs) runs=${2:?}; runs_set=1; shift ;;
    --only) only=${2:?}; shift ;;
    --sessions) sessions_list=${2//,/ }; shift ;;
    --sizes) sizes=${2//,/ }; shift ;;
    --modes) modes=${2//,/ }; shift ;;
    --messages) messages=${2:?}; shift ;;
    --quiet-logs) quiet_logs=1 ;;
    --port-base) port_base=${2:?}; shift ;;
    --out) out=${2:?}; shift ;;
    --keep) keep=1 ;;
    --no-build) build=0 ;;
    -h|--help) usage; exit 0 ;;
    *) usage >&2; die "unknown argument $1" ;;
  esac
  shift
done
[ "$quick" = 1 ] && [ "$runs_set" = 0 ] && runs=1
[[ $runs =~ ^[1-9][0-9]*$ ]] || die "--runs needs a positive number"
servers=()
for s in ${only//,/ }; do
  [[ ",$all_servers," == *",$s,"* ]] || die "unknown server $s (known: $all_servers)"
  servers+=("$s")
done
[ ${#servers[@]} -gt 0 ] || die "--only selected no server"
for m in $modes; do [[ $m == new || $m == reuse ]] || die "mode $m: new or reuse"; done
wants() { [[ " ${servers[*]} " == *" $1 "* ]]; }
wants_plugins() { wants postrider-3p || wants postrider-3p-warm; }
wants_tls() { wants postrider-verify || wants postfix-verify; }
wants_postfix() { wants postfix || wants postfix-verify || wants postfix-rspamd; }
wants_rspamd() { wants postrider-rspamd || wants postrider-milter || wants postfix-rspamd || wants haraka-rspamd; }
wants_haraka() { wants haraka || wants haraka-rspamd; }

messages_for() { # size
  if [ -n "$messages" ]; then echo "$messages"
  elif [ "$quick" = 1 ]; then echo 200
  elif [ "$1" -ge 65536 ]; then echo 2000
  else echo 10000; fi
}

pr_port=$port_base; pr3_port=$((port_base + 1)); pf_port=$((port_base + 2))
hk_port=$((port_base + 3)); sink_port=$((port_base + 4)); dns_port=$((port_base + 5))
pr3w_port=$((port_base + 6)); tls_sink_port=$((port_base + 7)); prv_port=$((port_base + 8))
rs_port=$((port_base + 9)); rs_milter_port=$((port_base + 10)); rs_ctl_port=$((port_base + 11))
prr_port=$((port_base + 12)); prm_port=$((port_base + 13)); hkr_port=$((port_base + 14))
# A developer's RUST_BACKTRACE=1 makes every error wasmtime creates internally (one per
# dropped plugin instance) capture a stack trace: run every server as a service runs.
unset RUST_BACKTRACE RUST_LIB_BACKTRACE

# ------------------------------------------------------------------ prerequisites
[ "$(id -u)" -eq 0 ] || die "needs root (installs and reconfigures the system's Postfix)"
[ "${BASH_VERSINFO[0]}" -ge 5 ] || die "needs bash 5 (EPOCHREALTIME)"
command -v python3 >/dev/null || die "needs python3"
apt_install() {
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null 2>&1 || {
    apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null; }
}
if ! command -v smtp-source >/dev/null || ! command -v postfix >/dev/null; then
  echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
  apt_install postfix
fi
if wants_plugins && ! command -v dnsmasq >/dev/null; then apt_install dnsmasq-base; fi
if wants_rspamd && ! command -v rspamd >/dev/null; then apt_install rspamd; fi
if wants_haraka; then
  command -v node >/dev/null && command -v npm >/dev/null || apt_install nodejs npm
  node_major=$(node -p 'process.versions.node.split(".")[0]')
  [ "$node_major" -ge 20 ] || die "Haraka $haraka_version needs node >= 20, this machine has $(node -v) (or leave it out: --only postrider,postrider-3p,postrider-3p-warm,postfix)"
fi
for p in $pr_port $pr3_port $pf_port $hk_port $sink_port $dns_port $pr3w_port $tls_sink_port $prv_port \
  $rs_port $rs_milter_port $rs_ctl_port $prr_port $prm_port $hkr_port; do
  ! ss -Hltn "sport = :$p" | grep -q . || die "port $p is in use (--port-base to move)"
done
! ss -Hlun "sport = :$dns_port" | grep -q . || die "udp port $dns_port is in use (--port-base to move)"

build_log=$(mktemp)
if [ "$build" = 1 ]; then
  echo "building postrider and postrider-loadgen (release)..."
  cargo build --release --locked -p postrider -p postrider-loadgen >"$build_log" 2>&1 || { tail -30 "$build_log"; die "cargo build failed"; }
  if wants_plugins; then
    rustup target list --installed | grep -qx wasm32-wasip2 || rustup target add wasm32-wasip2 >/dev/null
    echo "building the dnsbl, rcpt-allowlist and header-stamp plugins (wasm32-wasip2)..."
    (cd plugins && cargo build --release --locked --target wasm32-wasip2 -p dnsbl -p rcpt-allowlist -p header-stamp) >"$build_log" 2>&1 \
      || { tail -30 "$build_log"; die "plugin build failed"; }
  fi
  if wants postrider-rspamd; then
    rustup target list --installed | grep -qx wasm32-wasip2 || rustup target add wasm32-wasip2 >/dev/null
    echo "building the rspamd plugin (wasm32-wasip2)..."
    (cd plugins && cargo build --release --locked --target wasm32-wasip2 -p rspamd) >"$build_log" 2>&1 \
      || { tail -30 "$build_log"; die "plugin build failed"; }
  fi
fi
rm -f "$build_log"
if wants_haraka; then
  installed=$(node -p "require('./$haraka_dir/node_modules/Haraka/package.json').version" 2>/dev/null || true)
  if [ "$installed" != "$haraka_version" ]; then
    echo "installing Haraka $haraka_version from npm into $haraka_dir..."
    mkdir -p "$haraka_dir"
    npm install --prefix "$haraka_dir" --no-audit --no-fund --omit=optional --loglevel=error "Haraka@$haraka_version" >/dev/null \
      || die "npm install Haraka@$haraka_version failed"
  fi
fi
if wants haraka-rspamd; then
  installed=$(node -p "require('./$haraka_dir/node_modules/haraka-plugin-rspamd/package.json').version" 2>/dev/null || true)
  if [ "$installed" != "$haraka_rspamd_version" ]; then
    echo "installing haraka-plugin-rspamd $haraka_rspamd_version from npm into $haraka_dir..."
    npm install --prefix "$haraka_dir" --no-audit --no-fund --omit=optional --loglevel=error \
      "Haraka@$haraka_version" "haraka-plugin-rspamd@$haraka_rspamd_version" >/dev/null \
      || die "npm install haraka-plugin-rspamd@$haraka_rspamd_version failed"
  fi
fi
postrider_bin=$root/target/release/postrider
loadgen_bin=$root/target/release/postrider-loadgen
tls_sink_bin=$root/target/release/postrider-sink
wasm=$root/plugins/target/wasm32-wasip2/release
for f in "$postrider_bin" "$loadgen_bin" "$tls_sink_bin"; do [ -x "$f" ] || die "$f is missing (run without --no-build)"; done
if wants_plugins; then
  for f in dnsbl rcpt_allowlist header_stamp; do [ -f "$wasm/$f.wasm" ] || die "$wasm/$f.wasm is missing (run without --no-build)"; done
fi
if wants postrider-rspamd; then
  [ -f "$wasm/rspamd.wasm" ] || die "$wasm/rspamd.wasm is missing (run without --no-build)"
fi

# ------------------------------------------------------------------ work dir, cleanup
# On the Postfix queue's filesystem, so that both sync to the same disk.
work=$(mktemp -d /var/tmp/postrider-bench.XXXXXX)
# Postfix's smtp client reads the sink's CA file from here as user postfix.
chmod 755 "$work"
[ "$(stat -c %d "$work")" = "$(stat -c %d /var/spool/postfix 2>/dev/null || stat -c %d /var/spool)" ] \
  || echo "warning: $work and /var/spool/postfix are on different filesystems" >&2
mkdir -p "$work/runs"
srv=""; srv_pid=""; sampler_pid=""; sink_pid=""; tls_sink_pid=""; dns_pid=""; rspamd_pid=""; fg_pid=""; postfix_was_running=0; postfix_touched=0

# shellcheck source=bench/lib.sh
. bench/lib.sh
cleanup() {
  set +e
  trap - INT TERM
  [ -n "$fg_pid" ] && stop_pid "$fg_pid" 5
  [ -n "$sampler_pid" ] && stop_pid "$sampler_pid" 5
  [ -n "$srv" ] && stop_server
  stop_pid "$sink_pid" 5; stop_pid "$tls_sink_pid" 5; stop_pid "$dns_pid" 5; stop_pid "$rspamd_pid" 10
  if [ "$postfix_touched" = 1 ]; then
    postfix stop >/dev/null 2>&1
    restore_postfix
  fi
  if [ "$keep" = 1 ]; then echo "work directory kept: $work"; else rm -rf "$work"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM


# ------------------------------------------------------------------ the sink and DNS
smtp-sink -u nobody -c "127.0.0.1:$sink_port" 1024 >"$work/sink.out" 2>"$work/sink.err" &
sink_pid=$!
wait_until 10 listening "$sink_port" || die "smtp-sink did not start: $(cat "$work/sink.err")"
if wants_tls; then
  "$tls_sink_bin" --listen "127.0.0.1:$tls_sink_port" --name sink.bench.test --ca-out "$work/sink-ca.pem" \
    --counts "$work/tls-sink.counts" >"$work/tls-sink.out" 2>&1 &
  tls_sink_pid=$!
  wait_until 10 listening "$tls_sink_port" || die "postrider-sink did not start: $(cat "$work/tls-sink.out")"
  chmod 644 "$work/sink-ca.pem"
fi
# "MESSAGES HANDSHAKES RESUMED" at the TLS sink.
tls_counts() { cat "$work/tls-sink.counts" 2>/dev/null || echo "0 0 0"; }
# Messages the current server's sink has received so far: smtp-sink's -c counter ("mesg=N",
# updated at every "."), or the TLS sink's count for the -verify servers.
sink_count() {
  local last
  case $srv in
    *-verify) last=$(tls_counts); echo "${last%% *}"; return ;;
  esac
  last=$(tail -c 200 "$work/sink.out" | tr '\r' '\n' | grep -o 'mesg=[0-9]*' | tail -1)
  echo "${last#mesg=}" | sed 's/^$/0/'
}

if wants_plugins; then
  # The DNSBL zone: dnsmasq is authoritative (--local) for bl.bench.test and lists nobody, so
  # every lookup is answered NXDOMAIN, as a public list answers for a clean client.
  dnsmasq --keep-in-foreground --no-resolv --no-hosts --no-poll --bind-interfaces \
    --listen-address=127.0.0.1 --port="$dns_port" --local=/bl.bench.test/ --pid-file \
    --user=root --log-facility="$work/dnsmasq.log" &
  dns_pid=$!
  wait_until 10 listening "$dns_port" || die "dnsmasq did not start"
fi

if wants_rspamd; then
  # Debian's rspamd with its shipped rules and its own state here: the normal worker (the
  # plugin's /checkv2), the proxy in milter mode (Postfix's smtpd_milters) scanning through
  # that same worker, DNS pointed at a closed port (lookups fail at once, as in the tests).
  rs=$work/rspamd
  mkdir -p "$rs/local/override.d" "$rs/db" "$rs/run" "$rs/log"
  printf 'bind_socket = "127.0.0.1:%s";\n' "$rs_port" >"$rs/local/override.d/worker-normal.inc"
  printf 'bind_socket = "127.0.0.1:%s";\n' "$rs_ctl_port" >"$rs/local/override.d/worker-controller.inc"
  printf 'bind_socket = "127.0.0.1:%s";\nmilter = yes;\ntimeout = 120s;\nupstream "local" {\n  default = yes;\n  hosts = "127.0.0.1:%s";\n}\n' \
    "$rs_milter_port" "$rs_port" >"$rs/local/override.d/worker-proxy.inc"
  printf 'dns {\n  nameserver = ["127.0.0.1:9"];\n  timeout = 0.2s;\n  retransmits = 1;\n}\n' >"$rs/local/override.d/options.inc"
  chmod -R 777 "$rs"
  rspamd -f -u _rspamd -g _rspamd -c /etc/rspamd/rspamd.conf --var=LOCAL_CONFDIR="$rs/local" \
    --var=DBDIR="$rs/db" --var=RUNDIR="$rs/run" --var=LOGDIR="$rs/log" >"$rs/out" 2>&1 &
  rspamd_pid=$!
  # It compiles its regular expressions first.
  wait_until 180 listening "$rs_port" && wait_until 60 listening "$rs_milter_port" \
    || die "rspamd did not start: $(tail -3 "$rs/log/rspamd.log" 2>/dev/null)"
fi
# CPU seconds (user + system) rspamd's processes have used so far.
rspamd_cpu() {
  local ticks=0 pid stat
  for pid in $(pgrep -x rspamd); do
    read -r stat <"/proc/$pid/stat" 2>/dev/null || continue
    stat=${stat##*) }
    # Fields 14 and 15 of the whole line: utime and stime, in clock ticks.
    set -- $stat
    ticks=$((ticks + ${12} + ${13}))
  done
  awk -v t="$ticks" -v hz="$(getconf CLK_TCK)" 'BEGIN {printf "%.2f", t / hz}'
}

# ------------------------------------------------------------------ server configs
pr_log=info; hk_log=info
[ "$quiet_logs" = 1 ] && pr_log=warn && hk_log=warn

write_postrider_config() { # name port plugins (none, fresh, warm, verify or rspamd)
  mkdir -p "$work/$1"
  cat >"$work/$1/postrider.toml" <<TOML
hostname = "bench.test"
spool_dir = "spool"
admin_socket = "admin.sock"

[[listener]]
name = "smtp"
address = "127.0.0.1:$2"
kind = "smtp"

[relay]
relay_networks = ["127.0.0.0/8"]

[limits]
max_connections = 2000
max_connections_per_ip = 1000

# As Postfix below: 20 deliveries at once to the one destination.
[delivery]
tls = "none"
concurrency = 20
per_destination = 20

[plugins]
cache_dir = "$work/plugin-cache"
kv_path = "kv.redb"

TOML
  if [ "$3" = verify ]; then
    cat >>"$work/$1/postrider.toml" <<TOML
# The certificate names 127.0.0.1 and is checked against the sink's CA only.
[[route]]
domains = ["remote.test"]
relay = "127.0.0.1:$tls_sink_port"
tls = "verify"
ca_file = "$work/sink-ca.pem"
TOML
  else
    cat >>"$work/$1/postrider.toml" <<TOML
[[route]]
domains = ["remote.test"]
relay = "127.0.0.1:$sink_port"
tls = "none"
TOML
  fi
  if [ "$3" = milter ]; then
    cat >>"$work/$1/postrider.toml" <<TOML

# rspamd's proxy in milter mode, as Postfix's smtpd_milters below (tempfail when it is down).
[[milter]]
name = "rspamd"
address = "inet:127.0.0.1:$rs_milter_port"
failure_policy = "tempfail"
TOML
  fi
  if [ "$3" = rspamd ]; then
    cat >>"$work/$1/postrider.toml" <<TOML

# DATA: every message goes to rspamd's /checkv2 (allowed by the grant); its action applies.
[[plugin]]
name = "rspamd"
path = "$wasm/rspamd.wasm"
allow_http = ["http://127.0.0.1:$rs_port"]
timeout_ms = 20000
config = { url = "http://127.0.0.1:$rs_port" }
TOML
  fi
  if [ "$3" != none ] && [ "$3" != verify ] && [ "$3" != rspamd ] && [ "$3" != milter ]; then
    local reuse=""
    [ "$3" = warm ] && reuse="reuse = 100"
    cat >>"$work/$1/postrider.toml" <<TOML

[dns]
nameservers = ["127.0.0.1:$dns_port"]

# connect: the client (127.0.0.1) is looked up in bl.bench.test, which answers NXDOMAIN.
[[plugin]]
name = "dnsbl"
path = "$wasm/dnsbl.wasm"
$reuse
[plugin.config]
zones = [{ zone = "bl.bench.test" }]
skip_non_public = false

# rcpt: only user@remote.test is a valid recipient at remote.test.
[[plugin]]
name = "rcpt-allowlist"
path = "$wasm/rcpt_allowlist.wasm"
$reuse
[plugin.config.domains]
"remote.test" = ["user"]

# data: X-Postrider-Stamp with queue id, Message-ID presence, Subject length and size.
[[plugin]]
name = "header-stamp"
path = "$wasm/header_stamp.wasm"
$reuse
[plugin.config]
value = "bench.test"
TOML
  fi
  "$postrider_bin" check-config "$work/$1/postrider.toml" >/dev/null || die "$1: bad config"
}
wants postrider && write_postrider_config postrider "$pr_port" none
wants postrider-3p && write_postrider_config postrider-3p "$pr3_port" fresh
wants postrider-3p-warm && write_postrider_config postrider-3p-warm "$pr3w_port" warm
wants postrider-verify && write_postrider_config postrider-verify "$prv_port" verify
wants postrider-rspamd && write_postrider_config postrider-rspamd "$prr_port" rspamd
wants postrider-milter && write_postrider_config postrider-milter "$prm_port" milter

# Postfix as "postfix" (plain to smtp-sink) or "postfix-verify" (verified TLS to the TLS sink,
# at its best: a session cache, emptied for each run, and connections reused through tlsproxy).
configure_postfix() { # server
  if [ "$1" = postfix-verify ]; then
    rm -f "$pf_data"/smtp_scache*
    postconf -e "relayhost = [127.0.0.1]:$tls_sink_port" "smtp_tls_security_level = verify" \
      "smtp_tls_CAfile = $work/sink-ca.pem" "smtp_tls_verify_cert_match = sink.bench.test" \
      "smtp_tls_session_cache_database = btree:\${data_directory}/smtp_scache" \
      "smtp_tls_connection_reuse = yes" "smtpd_milters ="
  else
    postconf -e "relayhost = [127.0.0.1]:$sink_port" "smtp_tls_security_level = none" \
      "smtp_tls_connection_reuse = no" "smtpd_milters ="
  fi
  # rspamd as a milter, as its documentation sets Postfix up (tempfail when it is down).
  if [ "$1" = postfix-rspamd ]; then
    postconf -e "smtpd_milters = inet:127.0.0.1:$rs_milter_port" "milter_protocol = 6" \
      "milter_default_action = tempfail" "milter_mail_macros = i {mail_addr} {client_addr} {client_name} {auth_authen}"
  fi
}
if wants_postfix; then
  take_over_postfix
  # Loopback only, relay for 127.0.0.0/8, everything to the sink.
  postconf -e "inet_interfaces = loopback-only" "mydestination =" "mynetworks = 127.0.0.0/8" \
    "smtpd_client_restrictions =" \
    "smtpd_client_connection_count_limit = 0" "default_process_limit = 200" \
    "default_destination_concurrency_limit = 20" \
    "maillog_file = /var/log/postfix-bench.log" "compatibility_level = 3.6"
  pf_data=$(postconf -h data_directory)
  configure_postfix "${servers[0]}"
  postconf -M "$pf_port/inet=$pf_port inet n - n - - smtpd"
  # smtp_tls_connection_reuse needs tlsproxy, which Debian's master.cf leaves commented out.
  postconf -M "tlsproxy/unix=tlsproxy unix - - y - 0 tlsproxy"
  postfix check >/dev/null 2>&1 || die "postfix check failed"
  pf_queue=$(postconf -h queue_directory)
  leftover=$(find "$pf_queue"/{incoming,active,deferred,hold,maildrop} -type f 2>/dev/null | wc -l)
  [ "$leftover" -eq 0 ] || die "Postfix's queue holds $leftover messages; empty it first (postsuper -d ALL)"
fi

if wants haraka; then
  hk=$work/haraka
  node "$haraka_dir/node_modules/Haraka/bin/haraka" -i "$hk" >/dev/null 2>&1 || die "haraka -i failed"
  cp bench/compare/rcpt_allowlist.js "$hk/plugins/"
  # nodes=cpus: one worker per core, Haraka's advice for throughput (a master and workers).
  printf 'listen=127.0.0.1:%s\nnodes=cpus\n' "$hk_port" >"$hk/config/smtp.ini"
  printf '[main]\nlevel=%s\n' "$hk_log" >"$hk/config/log.ini"
  printf 'rcpt_allowlist\nqueue/smtp_forward\n' >"$hk/config/plugins"
  printf 'host=127.0.0.1\nport=%s\nenable_tls=false\n' "$sink_port" >"$hk/config/smtp_forward.ini"
  printf '[domains]\nremote.test=user\n' >"$hk/config/rcpt_allowlist.ini"
  echo bench.test >"$hk/config/me"
fi
if wants haraka-rspamd; then
  # haraka-plugin-rspamd: /checkv2 of the normal worker, spam rejected, its headers added;
  # mail from loopback and relayed mail scanned too (by default it skips both); then on to
  # the sink.
  hkr=$work/haraka-rspamd
  node "$haraka_dir/node_modules/Haraka/bin/haraka" -i "$hkr" >/dev/null 2>&1 || die "haraka -i failed"
  printf 'listen=127.0.0.1:%s\nnodes=cpus\n' "$hkr_port" >"$hkr/config/smtp.ini"
  printf '[main]\nlevel=%s\n' "$hk_log" >"$hkr/config/log.ini"
  cp bench/compare/rcpt_allowlist.js "$hkr/plugins/"
  printf 'rcpt_allowlist\nrspamd\nqueue/smtp_forward\n' >"$hkr/config/plugins"
  printf '[domains]\nremote.test=user\n' >"$hkr/config/rcpt_allowlist.ini"
  printf 'host=127.0.0.1\nport=%s\n[check]\nlocal_ip=true\nprivate_ip=true\nrelay=true\n[reject]\nspam=true\n[header]\nbar=X-Rspamd-Bar\nreport=X-Rspamd-Report\nscore=X-Rspamd-Score\n' \
    "$rs_port" >"$hkr/config/rspamd.ini"
  printf 'host=127.0.0.1\nport=%s\nenable_tls=false\n' "$sink_port" >"$hkr/config/smtp_forward.ini"
  echo bench.test >"$hkr/config/me"
fi

# ------------------------------------------------------------------ start, stop, drain
start_server() { # name; sets srv, srv_pid (the process whose tree is measured)
  srv=$1
  case $1 in
    postrider|postrider-3p|postrider-3p-warm|postrider-verify|postrider-rspamd|postrider-milter)
      local d=$work/$1
      # Output and log outside the config's directory, which the relay watches for changes.
      rm -rf "$d/spool" "$d.out"
      POSTRIDER_LOG=$pr_log "$postrider_bin" serve --config "$d/postrider.toml" >"$d.out" 2>>"$d.log" &
      srv_pid=$!
      # A first start compiles the plugins (then cached): allow for it.
      wait_until 300 grep -q "postrider: ready" "$d.out" || { echo "$1 did not start: $(tail -3 "$d.log")"; return 1; } ;;
    postfix|postfix-verify|postfix-rspamd) configure_postfix "$1" && start_postfix ;;
    haraka|haraka-rspamd)
      node "$haraka_dir/node_modules/Haraka/bin/haraka" -c "$work/$1" >>"$work/$1/log" 2>&1 &
      srv_pid=$!
      wait_until 60 listening "$(port_of "$1")" || { echo "$1 did not listen on $(port_of "$1")"; return 1; }
      # Every worker up (the master forks one per core).
      wait_until 30 workers_up "$srv_pid" "$(nproc)" \
        || { echo "haraka workers did not start"; return 1; } ;;
  esac
}
stop_server() {
  case $srv in
    postfix|postfix-verify|postfix-rspamd) stop_postfix "$srv_pid" ;;
    *) stop_pid "$srv_pid" 40 ;;
  esac
  srv=""; srv_pid=""
}
queued() { # messages still in the current server's queue (no forks: polled every 50 ms)
  local f
  case $srv in
    postrider|postrider-3p|postrider-3p-warm|postrider-verify|postrider-rspamd|postrider-milter) f=("$work/$srv/spool/active"/*); echo "${#f[@]}" ;;
    postfix|postfix-verify|postfix-rspamd) postfix_queued ;;
    haraka|haraka-rspamd) echo 0 ;;  # no queue: smtp_forward answers 250 once the sink has accepted
  esac
}
drained() { [ "$(queued)" -eq 0 ]; }
# The queue is empty, or the server is gone (then there is no point in waiting).
settled() { drained || ! alive "$srv_pid"; }
drain() { # seconds what: waits for the queue to empty; on failure says why in $err
  if wait_until "$1" settled && alive "$srv_pid"; then return 0; fi
  if alive "$srv_pid"; then
    err="${err:+$err; }queue not empty ${1}s after $2 ($(queued) left)"; flush_queue
  else
    err="${err:+$err; }$srv exited during $2"
  fi
  return 1
}
sink_reached() { [ "$(sink_count)" -ge "$1" ]; }
workers_up() { [ "$(cat /proc/"$1"/task/*/children 2>/dev/null | wc -w)" -ge "$2" ]; }
flush_queue() { # after a failed drain, so the next run starts empty
  case $srv in
    postfix|postfix-verify|postfix-rspamd) postsuper -d ALL >/dev/null 2>&1 || true ;;
  esac
}

# ------------------------------------------------------------------ one run
shopt -s nullglob
tsv=$work/runs.tsv
printf 'server\tsessions\tsize\tmode\trep\tmessages\tt_start\tt_accepted\tt_drained\tsink_delta\tlg_t_start\tlg_t_drained\tlg_sink_delta\trss_kb\tpss_kb\trss_how\trustc\tload1\terror\tloadgen_json\ttls_handshakes\ttls_resumed\trspamd_cpu_s\n' >"$tsv"

run_one() { # server sessions size mode rep messages
  local s=$1 sessions=$2 size=$3 mode=$4 rep=$5 n=$6 id="$1-$2-$3-$4-$5"
  local dir=$work/runs/$id err="" t0="" t1="" t2="" d1="" l0="" l2="" d2="" rss="" pss="" how json="{}"
  mkdir -p "$dir"
  local rustc load1
  rustc=$(pgrep -c rustc || true); load1=$(cut -d' ' -f1 /proc/loadavg)
  if ! start_server "$s" >"$dir/start.err" 2>&1; then
    err=$(tail -1 "$dir/start.err")
    stop_server
    printf '%s\t%s\t%s\t%s\t%s\t%s\t\t\t\t\t\t\t\t\t\t\t%s\t%s\t%s\t{}\n' "$s" "$sessions" "$size" "$mode" "$rep" "$n" "$rustc" "$load1" "${err:-start failed}" >>"$tsv"
    echo "  $id: $err"
    return
  fi
  python3 "$root/bench/compare/rss_peak.py" "$srv_pid" 0.1 "$dir/rss" &
  sampler_pid=$!
  local dflag=() reuse=()
  [ "$mode" = reuse ] && dflag=(-d) && reuse=(--reuse)
  local c0 dw

  # Warm-up, not timed: first connections, Postfix's processes, Haraka's JIT, plugin
  # instances. Same sessions, size and mode.
  local warm=$((sessions * 2)); [ "$warm" -lt 200 ] && warm=200; [ "$quick" = 1 ] && warm=$sessions
  c0=$(sink_count)
  run_fg timeout "$pass_limit" smtp-source "${dflag[@]}" -s "$sessions" -m "$warm" -l "$size" -M client.test \
    -f sender@client.test -t user@remote.test "127.0.0.1:$(port_of "$s")" >"$dir/warmup.out" 2>&1 \
    || err="warm-up: $(tail -1 "$dir/warmup.out")"
  drain "$drain_limit" "the warm-up" || true
  wait_until 10 sink_reached $((c0 + warm)) || true
  dw=$(( $(sink_count) - c0 ))
  [ "$dw" -eq "$warm" ] || err="${err:+$err; }sink got $dw of $warm from the warm-up"

  # Pass 1: smtp-source, end to end.
  local tls0 tls1 hs="" resumed="" rcpu0="" rcpu=""
  tls0=($(tls_counts))
  [[ $s == *-rspamd || $s == postrider-milter ]] && rcpu0=$(rspamd_cpu)
  c0=$(sink_count)
  t0=$EPOCHREALTIME
  if ! run_fg timeout "$pass_limit" smtp-source "${dflag[@]}" -s "$sessions" -m "$n" -l "$size" -M client.test \
        -f sender@client.test -t user@remote.test "127.0.0.1:$(port_of "$s")" >"$dir/smtp-source.out" 2>&1; then
    err="smtp-source: $(tail -1 "$dir/smtp-source.out")"
  fi
  t1=$EPOCHREALTIME
  drain "$drain_limit" "smtp-source" || true
  t2=$EPOCHREALTIME
  wait_until 10 sink_reached $((c0 + n)) || true
  d1=$(( $(sink_count) - c0 ))
  [ "$d1" -eq "$n" ] || err="${err:+$err; }sink got $d1 of $n"

  # Pass 2: the load generator, same load, for latencies.
  c0=$(sink_count)
  l0=$EPOCHREALTIME
  if ! run_fg timeout "$pass_limit" "$loadgen_bin" --server "127.0.0.1:$(port_of "$s")" --sessions "$sessions" \
        --messages "$n" --size "$size" "${reuse[@]}" >"$dir/loadgen.json" 2>"$dir/loadgen.err"; then
    err="${err:+$err; }loadgen: $(grep -o '"first_error":"[^"]*"' "$dir/loadgen.json" || tail -1 "$dir/loadgen.err")"
  fi
  json=$(head -1 "$dir/loadgen.json"); [ -n "$json" ] || json="{}"
  drain "$drain_limit" "the loadgen pass" || true
  l2=$EPOCHREALTIME
  wait_until 10 sink_reached $((c0 + n)) || true
  d2=$(( $(sink_count) - c0 ))
  [ "$d2" -eq "$n" ] || err="${err:+$err; }sink got $d2 of $n from loadgen"
  # TLS handshakes at the sink during both passes, and how many resumed a session.
  if [[ $s == *-verify ]]; then
    tls1=($(tls_counts))
    hs=$((tls1[1] - tls0[1])); resumed=$((tls1[2] - tls0[2]))
  fi
  # rspamd's CPU time during both passes (it runs beside the server under test).
  [ -n "$rcpu0" ] && rcpu=$(awk -v a="$rcpu0" -v b="$(rspamd_cpu)" 'BEGIN {printf "%.2f", b - a}')

  stop_pid "$sampler_pid" 5; sampler_pid=""
  read -r rss pss <"$dir/rss" || true
  case $s in
    postrider|postrider-3p|postrider-3p-warm|postrider-verify|postrider-rspamd|postrider-milter) rss=$(awk '/^VmHWM:/ {print $2}' "/proc/$srv_pid/status" 2>/dev/null || true); how=VmHWM ;;
    *) how=sampled-sum ;;
  esac
  stop_server
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' \
    "$s" "$sessions" "$size" "$mode" "$rep" "$n" "$t0" "$t1" "$t2" "$d1" "$l0" "$l2" "$d2" "$rss" "$pss" "$how" \
    "$rustc" "$load1" "${err//$'\t'/ }" "$json" "$hs" "$resumed" "$rcpu" >>"$tsv"
  awk -v n="$n" -v t0="$t0" -v t2="$t2" -v rss="$rss" -v j="$json" -v r="$rustc" -v e="$err" -v id="$id" 'BEGIN {
    p50 = j; sub(/.*"p50_ms":/, "", p50); sub(/[,}].*/, "", p50)
    p99 = j; sub(/.*"p99_ms":/, "", p99); sub(/[,}].*/, "", p99)
    printf "  %-32s %7.0f msgs/s e2e  p50 %6s ms  p99 %6s ms  rss %5.0f MB  rustc %s%s\n",
      id, n / (t2 - t0), p50, p99, rss / 1024, r, (e == "" ? "" : "  ERROR: " e) }'
  [ -n "$hs" ] && echo "    TLS at the sink: $hs handshakes ($resumed resumed) for $((2 * n)) messages"
  [ -n "$rcpu" ] && echo "    rspamd: $rcpu CPU seconds for $((2 * n)) messages"
  return 0
}
port_of() {
  case $1 in postrider) echo "$pr_port" ;; postrider-3p) echo "$pr3_port" ;; postrider-3p-warm) echo "$pr3w_port" ;;
    postrider-verify) echo "$prv_port" ;; postrider-rspamd) echo "$prr_port" ;; postrider-milter) echo "$prm_port" ;;
    postfix|postfix-verify|postfix-rspamd) echo "$pf_port" ;; haraka) echo "$hk_port" ;; haraka-rspamd) echo "$hkr_port" ;; esac
}

# ------------------------------------------------------------------ machine, versions
disk_desc() { # dir: "device fstype, size, model, rotational or not"
  local dev fs parent info
  read -r dev fs < <(df --output=source,fstype "$1" | tail -1)
  parent=$(lsblk -no PKNAME "$dev" 2>/dev/null | head -1)
  info=$(lsblk -dno SIZE,ROTA,MODEL "/dev/${parent:-${dev#/dev/}}" 2>/dev/null | awk '{
    rota = ($2 == "1") ? "rotational (as the kernel reports it)" : "non-rotational"; m = ""
    for (i = 3; i <= NF; i++) m = m " " $i
    printf "%s, %s%s", $1, rota, (m == "" ? "" : "," m) }')
  echo "$dev $fs${info:+, $info}"
}
meta=$work/meta.tsv
{
  printf 'date\t%s\n' "$(date -u '+%Y-%m-%d %H:%M UTC')"
  printf 'command\tbench/compare.sh %s\n' "$(printf '%q ' "${ORIG_ARGS[@]:-}")"
  printf 'quick\t%s\nruns\t%s\n' "$quick" "$runs"
  printf 'nproc\t%s\n' "$(nproc)"
  printf 'cpu\t%s\n' "$(lscpu | sed -n 's/^Model name: *//p' | head -1)"
  printf 'ram\t%s\n' "$(free -g | awk '/^Mem:/ {print $2 " GiB"}')"
  printf 'kernel\t%s\n' "$(uname -r)"
  printf 'os\t%s\n' "$(. /etc/os-release && echo "$PRETTY_NAME")"
  printf 'disk\t%s\n' "$(disk_desc "$work")"
  printf 'spool_fs\t%s\n' "Postrider's spool and Postfix's queue on the same filesystem"
  printf 'postrider\t%s (commit %s%s), %s\n' "$("$postrider_bin" --version 2>/dev/null | head -1)" "$(git rev-parse --short HEAD)" \
    "$([ -n "$(git status --porcelain --untracked-files=no)" ] && echo ", with uncommitted changes in the tree")" "$(rustc -V)"
  printf 'postfix\tPostfix %s (Debian package %s)\n' "$(postconf -h mail_version)" "$(dpkg-query -W -f='${Version}' postfix 2>/dev/null)"
  wants_haraka && printf 'haraka\tHaraka %s on node %s%s\n' "$(node -p "require('./$haraka_dir/node_modules/Haraka/package.json').version")" "$(node -v)" \
    "$(wants haraka-rspamd && printf ', haraka-plugin-rspamd %s' "$(node -p "require('./$haraka_dir/node_modules/haraka-plugin-rspamd/package.json').version")")"
  printf 'dnsmasq\t%s\n' "$(dnsmasq --version 2>/dev/null | head -1 | cut -d' ' -f1-3)"
  printf 'messages\t%s\n' "$(for z in $sizes; do printf '%s B: %s, ' "$z" "$(messages_for "$z")"; done | sed 's/, $//')"
  printf 'logs\t%s\n' "$([ "$quiet_logs" = 1 ] && echo quiet || echo default)"
} >"$meta"

# ------------------------------------------------------------------ the matrix
total=0
for _ in $sizes; do for _ in $sessions_list; do for _ in $modes; do total=$((total + runs * ${#servers[@]})); done; done; done
echo "running $total runs (${servers[*]}; sessions: $sessions_list; sizes: $sizes; modes: $modes; $runs run(s) each); rustc processes now: $(pgrep -c rustc || true)"
started=$EPOCHREALTIME
for size in $sizes; do
  n=$(messages_for "$size")
  for sessions in $sessions_list; do
    for mode in $modes; do
      echo "cell: $sessions sessions, $size bytes, $mode connection per message, $n messages per pass"
      for rep in $(seq "$runs"); do
        for s in "${servers[@]}"; do
          run_one "$s" "$sessions" "$size" "$mode" "$rep" "$n"
        done
      done
    done
  done
done
elapsed=$(awk -v a="$started" -v b="$EPOCHREALTIME" 'BEGIN {printf "%.0f", b - a}')
printf 'duration\t%s s for %s runs\n' "$elapsed" "$total" >>"$meta"
printf 'rustc_end\t%s\n' "$(pgrep -c rustc || true)" >>"$meta"

mkdir -p "$(dirname "$out")"
placeholder=(); [ "$quick" = 1 ] && placeholder=(--placeholder)
python3 bench/compare/report.py --meta "$meta" --runs "$tsv" "${placeholder[@]}" >"$out.tmp" && mv "$out.tmp" "$out"
cp "$tsv" bench/.last-runs.tsv; cp "$meta" bench/.last-meta.tsv
echo "done in ${elapsed}s: $out (raw: bench/.last-runs.tsv)"
if awk -F'\t' 'NR > 1 && $19 != "" {bad = 1} END {exit !bad}' "$tsv"; then
  echo "some runs failed: see the error column in $out" >&2
  exit 1
fi
