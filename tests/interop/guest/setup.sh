#!/bin/sh
# Runs once at boot (busybox init sysinit). Reads its parameters from /host/etc/vm.env (written by
# tests/interop/vm.py before boot), loads the kernel modules, configures the network, starts syslog
# and pptpd, and finally writes /host/state/ready. Its output lands in the host's console.log.
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
. /host/etc/vm.env
say() { echo "pptpi-setup: $*"; }

mkdir -p /lib/modules
busybox mount -r -t hostfs -o "$PPTPI_MODULES" none /lib/modules || say "cannot mount modules from $PPTPI_MODULES"
for m in ppp_generic ppp_async ppp_synctty ppp_mppe ppp_deflate bsd_comp \
         sch_netem sch_ingress cls_matchall act_mirred; do
  modprobe "$m" || say "modprobe $m failed"
done
modprobe ifb numifbs=1 || say "modprobe ifb failed"  # ingress netem goes through ifb0
[ -c /dev/ppp ] || mknod /dev/ppp c 108 0

busybox hostname pptpd-vm
ip link set lo up
ip link set "$PPTPI_DEV" up
ip addr add "$PPTPI_ADDR" dev "$PPTPI_DEV"
ip link set ifb0 up 2>/dev/null
echo 1 >/proc/sys/net/ipv4/ip_forward

mkdir -p /host/log /etc/ppp
busybox syslogd -n -O /host/log/syslog &
cp /host/etc/pptpd.conf /etc/pptpd.conf
cp /host/etc/pptpd-options /etc/ppp/pptpd-options
cp /host/etc/chap-secrets /etc/ppp/chap-secrets
cp /host/etc/pap-secrets /etc/ppp/pap-secrets
chmod 600 /etc/ppp/chap-secrets /etc/ppp/pap-secrets

# Servers reachable through the tunnel: iperf3 and a TCP echo (port 7).
iperf3 -s -D --logfile /var/log/iperf3.log
socat TCP-LISTEN:7,fork,reuseaddr EXEC:cat </dev/null >/dev/null 2>&1 &

. /host/guest/lib.sh
pptpd_start
say "ready"
date +%s >/host/state/ready
