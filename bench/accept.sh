#!/usr/bin/env bash
# Acceptance-only throughput: Postfix's smtp-source against `postrider serve` and against
# Postfix itself on the same machine in the same run. Both sync before 250: Postrider's spool
# (group commit) and Postfix's queue (messages are put on hold, so neither delivers).
#
#   bench/accept.sh [SESSIONS] [MESSAGES] [SIZE]     (defaults: 20 5000 4096)
#
# Needs root (installs and configures Debian's postfix). Loopback only.
set -euo pipefail
cd "$(dirname "$0")/.."
sessions=${1:-20}; messages=${2:-5000}; size=${3:-4096}
pr_port=2600; pf_port=2601

if ! command -v smtp-source >/dev/null || ! command -v postfix >/dev/null; then
  echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postfix >/dev/null
fi
cargo build --release -p postrider --locked >/dev/null

work=$(mktemp -d)
trap 'kill $(cat "$work/pid" 2>/dev/null) 2>/dev/null || true; postfix stop >/dev/null 2>&1 || true; rm -rf "$work"' EXIT

# Postrider
cat > "$work/postrider.toml" <<TOML
hostname = "bench.test"
spool_dir = "spool"
[[listener]]
name = "smtp"
address = "127.0.0.1:$pr_port"
kind = "smtp"
[relay]
local_domains = ["bench.test"]
[limits]
max_connections_per_ip = 1000
# Postfix does no SPF/DKIM here either; and bench.test has no DNS.
[authentication]
verify = false
TOML
POSTRIDER_LOG=warn target/release/postrider serve --config "$work/postrider.toml" > "$work/out" 2> "$work/err" &
echo $! > "$work/pid"
for _ in $(seq 100); do grep -q "postrider: ready" "$work/out" && break; sleep 0.1; done

# Postfix: a loopback smtpd on $pf_port that accepts for bench.test and holds every message.
[ -f /etc/postfix/main.cf ] || touch /etc/postfix/main.cf
postconf -e "inet_interfaces = loopback-only" "mydestination = bench.test" "local_recipient_maps =" "alias_maps =" "alias_database =" \
  "smtpd_client_restrictions = check_client_access static:HOLD" \
  "smtpd_client_connection_count_limit = 0" "default_process_limit = 200" \
  "maillog_file = /var/log/postfix-bench.log" "compatibility_level = 3.6"
postconf -M "$pf_port/inet=$pf_port inet n - n - - smtpd"
postfix stop >/dev/null 2>&1 || true
postfix start >/dev/null 2>&1
sleep 1

run() { # name port
  local start end
  start=$(date +%s.%N)
  smtp-source -s "$sessions" -m "$messages" -l "$size" -f sender@client.test -t user@bench.test "127.0.0.1:$2"
  end=$(date +%s.%N)
  python3 -c "import sys; e=$end-$start; print(f'$1: {$messages} msgs in {e:.2f}s = {$messages/e:.0f} msgs/s')"
}

echo "smtp-source -s $sessions -m $messages -l $size ($(nproc) cores, $(uname -r))"
run postrider $pr_port
run postfix $pf_port
echo "postrider spool: $(ls "$work/spool/active" | wc -l) messages; postfix hold queue: $(find /var/spool/postfix/hold -type f | wc -l) messages"
postsuper -d ALL hold >/dev/null 2>&1 || true
