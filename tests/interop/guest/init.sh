#!/bin/sh
# Guest side of the interop VM, stage 2 (stage 1 is the /init baked into the image by
# build_image.sh; it mounts the host share at /host and runs this file from there).
# Sets the machine up, then hands PID 1 to busybox init, which runs setup.sh once and keeps
# agent.sh (the host's command channel) alive.
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
mkdir -p /run /tmp /dev/pts /dev/shm /var/log /var/run /var/lock
busybox mount -t tmpfs -o mode=0755 tmpfs /run
busybox mount -t tmpfs -o mode=1777 tmpfs /tmp
busybox mount -t devpts -o gid=5,mode=0620,ptmxmode=0666 devpts /dev/pts
busybox mount -t tmpfs tmpfs /dev/shm
cat >/etc/inittab <<'TAB'
::sysinit:/bin/sh /host/guest/setup.sh
::respawn:/bin/sh /host/guest/agent.sh
TAB
exec busybox init
