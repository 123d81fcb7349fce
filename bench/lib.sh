# Shell helpers shared by the bench scripts (sourced, not run).

alive() { # pid: running (an exited child not yet reaped is a zombie: not alive)
  local rest
  [ -n "$1" ] && [ -r "/proc/$1/stat" ] || return 1
  read -r rest <"/proc/$1/stat" 2>/dev/null || return 1
  rest=${rest##*) }
  [ "${rest%% *}" != Z ]
}
stop_pid() { # pid seconds: TERM, then KILL after the grace period (children too)
  local pid=$1 grace=$2 kids
  alive "$pid" || { [ -n "$pid" ] && wait "$pid" 2>/dev/null; return 0; }
  kids=$(cat /proc/"$pid"/task/*/children 2>/dev/null || true)
  kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq $((grace * 20))); do alive "$pid" || break; sleep 0.05; done
  # shellcheck disable=SC2086
  kill -KILL "$pid" $kids 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
}
# Long client runs go through here: in the background and waited for, so that Ctrl-C (and
# SIGTERM) interrupts the wait and runs the trap at once (bash does not act on a SIGINT that
# a foreground child such as timeout(1) handled itself). Sets fg_pid while it waits.
run_fg() {
  "$@" &
  fg_pid=$!
  local rc=0
  wait "$fg_pid" || rc=$?
  fg_pid=""
  return "$rc"
}
wait_until() { # seconds command...: true once the command succeeds, false after the deadline
  local limit=$1; shift
  local end=$(( ${EPOCHREALTIME%.*} + limit ))
  until "$@"; do
    [ "${EPOCHREALTIME%.*}" -lt "$end" ] || return 1
    sleep 0.05
  done
}
listening() { ss -Hltn "sport = :$1" | grep -q .; }
# Saves the system Postfix's main.cf and master.cf into $work and stops it, remembering
# whether it ran ($postfix_was_running) and that it must be restored ($postfix_touched).
take_over_postfix() {
  postfix status >/dev/null 2>&1 && postfix_was_running=1
  [ -f /etc/postfix/main.cf ] || touch /etc/postfix/main.cf
  cp -p /etc/postfix/main.cf "$work/postfix-main.cf"; cp -p /etc/postfix/master.cf "$work/postfix-master.cf"
  postfix_touched=1
  postfix stop >/dev/null 2>&1 || true
}
# Starts the bench's Postfix (SMTP on $pf_port, queue in $pf_queue) and sets srv_pid to its
# master process.
start_postfix() {
  postfix start >/dev/null 2>&1 || { echo "postfix start failed"; return 1; }
  wait_until 30 listening "$pf_port" || { echo "postfix did not listen on $pf_port"; return 1; }
  srv_pid=$(tr -d ' ' <"$pf_queue/pid/master.pid")
}
stop_postfix() { # master pid: `postfix stop`, then abort and KILL if it lingers
  postfix stop >/dev/null 2>&1 || true
  wait_until 30 test ! -e "/proc/$1" || { postfix abort >/dev/null 2>&1 || true; kill -KILL "$1" 2>/dev/null || true; }
}
postfix_queued() { # messages in $pf_queue (with nullglob set; no forks: fit for polling)
  local f
  f=("$pf_queue"/incoming/* "$pf_queue"/active/* "$pf_queue"/maildrop/* "$pf_queue"/deferred/*/* "$pf_queue"/hold/*)
  echo "${#f[@]}"
}
# After `postfix stop`: puts back the main.cf and master.cf saved in $work and starts Postfix
# again if it ran before the bench ($postfix_was_running).
restore_postfix() {
  cp -p "$work/postfix-main.cf" /etc/postfix/main.cf 2>/dev/null
  cp -p "$work/postfix-master.cf" /etc/postfix/master.cf 2>/dev/null
  [ "$postfix_was_running" = 1 ] && postfix start >/dev/null 2>&1
}
