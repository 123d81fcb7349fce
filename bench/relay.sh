#!/usr/bin/env bash
# End-to-end relay throughput: smtp-source -> relay -> smtp-sink, for Postrider and for
# Postfix (relayhost to the same sink) in the same run. Both sync before 250. The time runs
# from the first connection until the relay's queue is empty again (every message handed on).
#
#   bench/relay.sh [SESSIONS] [MESSAGES] [SIZE]     (defaults: 20 5000 4096)
#
# Needs root (installs and configures Debian's postfix). Loopback only.
set -euo pipefail
cd "$(dirname "$0")/.."
sessions=${1:-20}; messages=${2:-5000}; size=${3:-4096}
pr_port=2600; pf_port=2601; sink_port=2700

if ! command -v smtp-source >/dev/null || ! command -v postfix >/dev/null; then
  echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postfix >/dev/null
fi
cargo build --release -p postrider --locked >/dev/null 2>&1

work=$(mktemp -d)
cleanup() {
  kill "$(cat "$work/pid" 2>/dev/null)" "$(cat "$work/sink.pid" 2>/dev/null)" 2>/dev/null || true
  postfix stop >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT

smtp-sink -u nobody 127.0.0.1:$sink_port 256 & echo $! > "$work/sink.pid"

cat > "$work/postrider.toml" <<TOML
hostname = "bench.test"
spool_dir = "spool"
admin_socket = "admin.sock"
[[listener]]
name = "smtp"
address = "127.0.0.1:$pr_port"
kind = "smtp"
[relay]
relay_networks = ["127.0.0.0/8"]
[limits]
max_connections_per_ip = 1000
[delivery]
concurrency = 20
per_destination = 20
[[route]]
domains = ["remote.test"]
relay = "127.0.0.1:$sink_port"
tls = "none"
TOML
POSTRIDER_LOG=warn target/release/postrider serve --config "$work/postrider.toml" > "$work/out" 2> "$work/err" &
echo $! > "$work/pid"
for _ in $(seq 100); do grep -q "postrider: ready" "$work/out" && break; sleep 0.1; done

[ -f /etc/postfix/main.cf ] || touch /etc/postfix/main.cf
postconf -e "inet_interfaces = loopback-only" "mydestination =" "mynetworks = 127.0.0.0/8" \
  "relayhost = [127.0.0.1]:$sink_port" "smtpd_client_restrictions =" \
  "smtpd_client_connection_count_limit = 0" "default_process_limit = 200" \
  "default_destination_concurrency_limit = 20" "smtp_tls_security_level = none" \
  "maillog_file = /var/log/postfix-bench.log" "compatibility_level = 3.6"
postconf -M "$pf_port/inet=$pf_port inet n - n - - smtpd"
postfix stop >/dev/null 2>&1 || true
postfix start >/dev/null 2>&1
sleep 1

postrider_queued() { ls "$work/spool/active" 2>/dev/null | wc -l; }
postfix_queued() { find /var/spool/postfix/incoming /var/spool/postfix/active /var/spool/postfix/deferred /var/spool/postfix/maildrop -type f 2>/dev/null | wc -l; }

run() { # name port queue-counter
  local start end
  start=$(date +%s.%N)
  smtp-source -s "$sessions" -m "$messages" -l "$size" -f sender@client.test -t user@remote.test "127.0.0.1:$2"
  local accepted; accepted=$(date +%s.%N)
  for _ in $(seq 6000); do [ "$($3)" -eq 0 ] && break; sleep 0.05; done
  end=$(date +%s.%N)
  python3 -c "a=$accepted-$start; e=$end-$start; print(f'$1: accepted {$messages} in {a:.2f}s, relayed all in {e:.2f}s = {$messages/e:.0f} msgs/s end to end')"
}

echo "smtp-source -s $sessions -m $messages -l $size -> relay -> smtp-sink ($(nproc) cores, $(uname -r))"
run postrider $pr_port postrider_queued
run postfix $pf_port postfix_queued
