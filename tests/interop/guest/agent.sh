#!/bin/sh
# The host's command channel into the guest (kept alive by busybox init).
#
# The host writes a shell script to /host/cmd/ID.sh (hostfs), then rings the doorbell: it writes
# "ID\n" into a pipe that UML shows the guest as the console /dev/tty1 (con1=fd:N). The agent
# blocks reading that tty (no polling: a fork costs ~40 ms in UML), runs each script in the
# background with stdout/stderr in ID.out/ID.err and finally writes its exit status to ID.rc.
# hostfs writes go straight to the host file, so ID.out is complete once ID.rc holds a line.
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
cd /host/cmd || exit 1
stty -F /dev/tty1 raw -echo 2>/dev/null
while read -r id; do
  case $id in
    *[!A-Za-z0-9_-]*|'') continue ;;
  esac
  [ -f "$id.sh" ] || continue
  ( sh "$id.sh" >"$id.out" 2>"$id.err" </dev/null; echo $? >"$id.rc" ) &
done </dev/tty1
