# Shell functions for the guest, sourced by the host's commands (". /host/guest/lib.sh; ...").
# Process creation is slow under UML (~50 ms per exec), so these use shell builtins where they
# can: processes are found by reading /proc/PID/comm, not with pgrep/pkill.
export PATH=/usr/sbin:/usr/bin:/sbin:/bin

# pids_of NAME... : PIDs of processes whose command name is one of NAMEs (one per line).
pids_of() {
  for d in /proc/[0-9]*; do
    read -r c <"$d/comm" 2>/dev/null || continue
    for n in "$@"; do
      [ "$c" = "$n" ] && echo "${d#/proc/}"
    done
  done
}

# signal_all SIG NAME... : sends SIG to every process named one of NAMEs.
signal_all() {
  sig=$1; shift
  for p in $(pids_of "$@"); do kill -"$sig" "$p" 2>/dev/null; done
}

# wait_gone SECONDS NAME... : waits until no process is named one of NAMEs (status 1 on timeout).
wait_gone() {
  n=$(( $1 * 10 )); shift
  while [ -n "$(pids_of "$@")" ]; do
    n=$((n - 1)); [ $n -le 0 ] && return 1
    sleep 0.1
  done
}

# listening PORT_HEX : is something listening on this TCP port (e.g. 06BB = 1723)?
listening() {
  while read -r _ local _ st _; do
    case $local in *:"$1") [ "$st" = 0A ] && return 0 ;; esac
  done </proc/net/tcp
  return 1
}

# pptpd_start : starts pptpd (foreground mode, in the background) and waits for port 1723.
pptpd_start() {
  if [ -n "$(pids_of pptpd)" ]; then echo "pptpd already running"; return 0; fi
  pptpd -f -c /etc/pptpd.conf -o /etc/ppp/pptpd-options >>/host/log/pptpd.out 2>&1 </dev/null &
  n=100
  until listening 06BB; do
    n=$((n - 1)); [ $n -le 0 ] && { echo "pptpd did not listen on 1723 within 10 s"; return 1; }
    sleep 0.1
  done
}

# pptpd_stop SIG [sessions] : signals pptpd; with "sessions" also pptpctrl and pppd, so live calls
# end too (on TERM pppd sends LCP Terminate-Request and waits up to ~6 s for the ack).
pptpd_stop() {
  sig=${1:-TERM}
  if [ "${2:-}" = sessions ]; then
    signal_all "$sig" pptpd pptpctrl pppd
    wait_gone 10 pptpd pptpctrl pppd || { echo "pptpd/pppd still alive after SIG$sig"; return 1; }
  else
    signal_all "$sig" pptpd
    wait_gone 10 pptpd || { echo "pptpd still alive after SIG$sig"; return 1; }
  fi
}

# sessions : command lines of the live pppd processes.
sessions() {
  for p in $(pids_of pppd); do
    tr '\0' ' ' <"/proc/$p/cmdline" 2>/dev/null && echo
  done
}
