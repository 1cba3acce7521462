#!/bin/sh
# The host's command channel into the guest (kept alive by busybox init).
#
# The host writes a shell script to /host/cmd/ID.sh (hostfs), then rings the doorbell: it writes
# "ID\n" into a pipe that UML shows the guest as the console /dev/tty1 (con1=fd:N). The agent
# blocks reading that tty (no polling: a fork costs ~40-100 ms under UML), runs each script once,
# in the background, with stdout/stderr in ID.out/ID.err, and finally writes its exit status to
# ID.rc. hostfs writes go straight to the host file, so ID.out is complete once ID.rc holds a line.
# A doorbell rung before the agent opened the tty is lost: so after opening it the agent runs
# whatever is pending, and the host rings again while it waits (ID.started makes that harmless).
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
cd /host/cmd || exit 1

run() {
  { [ -f "$1.sh" ] && [ ! -e "$1.started" ]; } || return 0
  : >"$1.started"
  ( sh "$1.sh" >"$1.out" 2>"$1.err" </dev/null; echo $? >"$1.rc" ) &
}

serve() {
  read -r self _ </proc/self/stat
  exec 3</dev/tty1
  stty -F /dev/tty1 raw -echo 2>/dev/null
  for f in *.sh; do
    [ -f "$f" ] && run "${f%.sh}"
  done
  echo "$self" >/host/state/agent
  while read -r id <&3; do
    case $id in
      *[!A-Za-z0-9_-]*|'') continue ;;
    esac
    run "$id"
  done
}

# busybox init made this shell a session leader: a tty it opens would become its controlling
# terminal, and when it died the kernel would SIGHUP everything started from it (pptpd after a
# restart, running commands). So the tty is opened by a child, which is not a session leader.
serve &
wait $!
