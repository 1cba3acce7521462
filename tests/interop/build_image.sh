#!/usr/bin/env bash
# Builds the root file system of the interop test VM: Debian bookworm (mmdebstrap, variant
# "essential") with pptpd, pppd and a few tools, packed as a zstd-compressed initramfs (newc cpio)
# that user-mode-linux boots from RAM. Run as root.
#
#   build_image.sh OUT.cpio.zst SOURCES.list [APT.conf]
#
# SOURCES.list holds one-line apt source entries ("deb [signed-by=...] URI SUITE COMPONENTS") and
# APT.conf apt options (proxies, Check-Valid-Until, ...). Both come from this machine's own apt
# configuration at run time (tests/interop/vm.py writes them); nothing here names a mirror.
#
# The image holds no test logic: its /init mounts the host directory named on the kernel command
# line (pptpi.share=...) with hostfs and hands over to the guest scripts found there, so changing
# those scripts needs no rebuild. Kernel modules come from the host's user-mode-linux package, also
# through hostfs, so they always match the kernel that boots.
set -euo pipefail

SUITE=bookworm
PACKAGES=(pptpd ppp iproute2 iperf3 busybox kmod socat procps iputils-ping)

out=${1:?usage: build_image.sh OUT.cpio.zst SOURCES.list [APT.conf]}
sources=${2:?usage: build_image.sh OUT.cpio.zst SOURCES.list [APT.conf]}
aptconf=${3:-}
[[ $(id -u) -eq 0 ]] || { echo "build_image.sh: must run as root" >&2; exit 1; }
for tool in mmdebstrap cpio zstd; do
  command -v "$tool" >/dev/null || { echo "build_image.sh: $tool not found (apt-get install $tool)" >&2; exit 1; }
done
[[ -s $sources ]] || { echo "build_image.sh: no apt sources in $sources" >&2; exit 1; }

work=$(mktemp -d "${TMPDIR:-/tmp}/pptpi-build.XXXXXX")
trap 'rm -rf "$work"' EXIT
root=$work/root

# The bootstrap /init: everything else is read from the host share at boot.
cat >"$work/init" <<'INIT'
#!/bin/sh
# pptp-sidecar interop VM bootstrap (baked into the image by build_image.sh).
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
busybox mount -t proc proc /proc
busybox mount -t sysfs sysfs /sys
busybox mount -t devtmpfs devtmpfs /dev 2>/dev/null
share=
for arg in $(cat /proc/cmdline); do
  case $arg in pptpi.share=*) share=${arg#pptpi.share=} ;; esac
done
mkdir -p /host
if [ -z "$share" ] || ! busybox mount -t hostfs -o "$share" none /host; then
  echo "pptpi-init: cannot mount the host share '$share' (pptpi.share= on the kernel command line)"
  exec busybox sh
fi
exec /bin/sh /host/guest/init.sh
INIT

aptopts=()
[[ -n $aptconf && -s $aptconf ]] && aptopts+=("--aptopt=$aptconf")

mmdebstrap --variant=essential --mode=root --quiet \
  --include="$(IFS=,; echo "${PACKAGES[*]}")" \
  "${aptopts[@]}" \
  --aptopt='Acquire::Languages "none"' \
  --dpkgopt='path-exclude=/usr/share/doc/*' \
  --dpkgopt='path-exclude=/usr/share/man/*' \
  --dpkgopt='path-exclude=/usr/share/locale/*' \
  --dpkgopt='path-exclude=/usr/share/info/*' \
  --customize-hook='rm -rf "$1"/var/cache/apt/* "$1"/var/lib/apt/lists/*' \
  --customize-hook="upload $work/init /init" \
  --customize-hook='chmod 0755 "$1/init"' \
  "$SUITE" "$root" "$sources"

# Version record, read by the tests (they check what they run against).
chroot "$root" dpkg-query -W -f='${Package} ${Version}\n' pptpd ppp iproute2 iperf3 >"$root/pptpi-versions"

tmp_out=$out.tmp.$$
(cd "$root" && find . -print0 | cpio --null -o -H newc --quiet) | zstd -q -T0 -9 -o "$tmp_out" -f
mv -f "$tmp_out" "$out"
echo "build_image.sh: wrote $out ($(du -h "$out" | cut -f1), $(du -sh "$root" | cut -f1) unpacked)"
