#!/bin/bash
# Builds qemu-compose's tiny test guest for orchestration tests: the Debian kernel and a
# small initramfs from Debian packages (busybox-static, dropbear), no disk, no cloud-init.
# Its /init takes the SSH key and first user name from the NoCloud seed (label cidata),
# gets an address by DHCP on eth0, runs dropbear on port 22 and powers off on the ACPI
# power button. SSH answers within seconds under TCG.
# usage: tiny-guest.sh OUTDIR      deps: apt (Debian 12 sources), dpkg-deb, zstd or xz
set -euo pipefail
OUT=$1
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
W=$(mktemp -d "$OUT/.build.XXXXXX")
trap 'rm -rf "$W"' EXIT
cd "$W"
VMLINUZ=""
ts() { date +%s.%N; }
# ---------- 1. packages (plain apt-get download, no mirror named) ----------
apt-cache show linux-image-amd64 >/dev/null 2>&1 || apt-get update -qq >/dev/null
if [ -n "$VMLINUZ" ]; then KVER=$(file -b "$VMLINUZ" | sed -n 's/.*version \([^ ]*\) .*/\1/p')
else KVER=$(apt-cache depends linux-image-amd64 | sed -n 's/.*Depends: linux-image-\(.*\)$/\1/p' | head -1); fi
echo "kernel $KVER"
rm -rf debs pkg root; mkdir -p debs pkg root
download() { (cd debs && apt-get download -q busybox-static dropbear-bin libtomcrypt1 libtommath1 libgmp10 \
   zlib1g libcrypt1 libc6 "linux-image-$KVER" >/dev/null 2>&1); }
download || { echo "apt-get download failed"; exit 1; }
for d in debs/*.deb; do dpkg-deb -x "$d" pkg; done
BB=pkg/bin/busybox
[ -n "$VMLINUZ" ] || VMLINUZ=pkg/boot/vmlinuz-$KVER
cp "$VMLINUZ" vmlinuz

# ---------- 2. initramfs tree ----------
mkdir -p root/{bin,sbin,etc,proc,sys,dev,run,tmp,mnt/seed,root/.ssh,lib64,lib/x86_64-linux-gnu,etc/dropbear,var/log}
cp $BB root/bin/busybox
for a in $($BB --list); do [ "$a" = busybox ] || ln -sf busybox "root/bin/$a"; done
cp pkg/usr/sbin/dropbear root/bin/; cp pkg/usr/bin/dropbearkey root/bin/
LP=$W/pkg/lib/x86_64-linux-gnu:$W/pkg/usr/lib/x86_64-linux-gnu
for lib in $(pkg/lib64/ld-linux-x86-64.so.2 --library-path "$LP" --list root/bin/dropbear | awk '/=>/{print $3}'); do
  cp -L "$lib" root/lib/x86_64-linux-gnu/
done
cp -L pkg/lib64/ld-linux-x86-64.so.2 root/lib64/
# kernel modules (+ deps) for virtio disks/net, iso9660 seed, power button events
M=pkg/lib/modules/$KVER; MODS="virtio_pci virtio_blk virtio_net isofs evdev button af_packet pvpanic_mmio"
need=""; add() { local m f; m=$1
  f=$(find $M/kernel -name "$m.ko*" | head -1); [ -n "$f" ] || return 0        # built in
  case " $need " in *" $f "*) return 0;; esac
  for d in $(grep -ao 'depends=[a-z0-9_,-]*' "$f" | head -1 | sed 's/depends=//' | tr , ' '); do add "$d"; done
  need="$need $f"; }
for m in $MODS; do add "$m"; add "${m//_/-}"; done
mkdir -p root/lib/modules/$KVER; : > root/etc/modules
for f in $need; do b=$(basename "$f"); case $b in
  *.xz) $BB xz -dc "$f" > root/lib/modules/$KVER/${b%.xz};; *.zst) zstd -qdc "$f" > root/lib/modules/$KVER/${b%.zst};;
  *) cp "$f" root/lib/modules/$KVER/;; esac
  b=${b%.xz}; echo "${b%.zst}" >> root/etc/modules; done
echo "modules:" $(cat root/etc/modules)
printf 'root:x:0:0:root:/root:/bin/sh\n' > root/etc/passwd; printf 'root:x:0:\n' > root/etc/group
printf '/bin/sh\n/bin/ash\n' > root/etc/shells
cat > root/etc/udhcpc.script <<'EOF'
#!/bin/sh
case "$1" in bound|renew)
  ifconfig "$interface" "$ip" netmask "${subnet:-255.255.255.0}" up
  [ "$interface" = eth0 ] || exit 0   # a bridge NIC: its address only (eth0 is user-mode)
  [ -n "$router" ] && route add default gw "${router%% *}" dev "$interface"
  : > /etc/resolv.conf; for d in $dns; do echo "nameserver $d" >> /etc/resolv.conf; done;;
esac
EOF
cat > root/init <<'EOF'
#!/bin/sh
export PATH=/bin HOME=/root
mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev
mkdir -p /dev/pts; mount -t devpts devpts /dev/pts; mount -t tmpfs run /run; mount -t tmpfs tmp /tmp
K=/lib/modules/$(uname -r); while read m; do insmod $K/$m 2>/dev/null; done < /etc/modules
ifconfig lo 127.0.0.1 up
for n in /sys/class/net/eth*; do n=${n##*/}   # eth0 user-mode, then one NIC a bridge network
  ip link set $n up; timeout 20 udhcpc -i $n -f -q -n -t 10 -T 1 -s /etc/udhcpc.script >/dev/null 2>&1 &
done
# NoCloud seed: ISO9660/vfat with label cidata
S=""; for i in 1 2 3 4 5 6 7 8 9 10; do S=$(findfs LABEL=cidata 2>/dev/null || findfs LABEL=CIDATA 2>/dev/null) && break; sleep 0.2; done
U=dev
if [ -n "$S" ] && mount -o ro "$S" /mnt/seed; then
  UD=/mnt/seed/user-data
  grep -oE '(ssh-ed25519|ssh-rsa|ecdsa-sha2-nistp[0-9]+|sk-ssh-ed25519@openssh.com|sk-ecdsa-sha2-nistp256@openssh.com) [A-Za-z0-9+/=]+( [^]"'"'"',]*)?' $UD \
    | sed 's/ *$//' > /root/.ssh/authorized_keys
  n=$(sed -n 's/^[ -]*name: *["'"'"']\{0,1\}\([a-z_][a-z0-9_-]*\).*/\1/p' $UD | head -1); [ -n "$n" ] && U=$n
  h=$(sed -n 's/^local-hostname: *//p' /mnt/seed/meta-data 2>/dev/null); [ -n "$h" ] && hostname "$h"
  # cloud-init would run this bootcmd: the kernel panics on an NMI (`fault panic`)
  grep -q qemu-compose-nmi-panic $UD && echo 1 > /proc/sys/kernel/unknown_nmi_panic
  umount /mnt/seed
else echo "tiny-init: no cidata seed found" > /dev/console; fi
if [ "$U" != root ]; then
  echo "$U:x:1000:1000:$U:/home/$U:/bin/sh" >> /etc/passwd; echo "$U:x:1000:" >> /etc/group
  mkdir -p /home/$U/.ssh; cp /root/.ssh/authorized_keys /home/$U/.ssh/; chown -R 1000:1000 /home/$U; chmod 700 /home/$U/.ssh
fi
chmod 700 /root/.ssh
dropbearkey -t ed25519 -f /etc/dropbear/dropbear_ed25519_host_key >/dev/null 2>&1
wait   # DHCP lease (udhcpc -q exits once bound)
dropbear -s -p 22 -r /etc/dropbear/dropbear_ed25519_host_key
echo "tiny-init: ssh ready ($(cut -d' ' -f1 /proc/uptime)s, user $U, $(wc -l < /root/.ssh/authorized_keys) keys)" > /dev/console
# ACPI power button -> poweroff (block on the "Power Button" evdev node)
for e in /sys/class/input/event*; do [ "$(cat $e/device/name 2>/dev/null)" = "Power Button" ] && P=/dev/input/${e##*/} && break; done
if [ -n "${P:-}" ]; then dd if=$P of=/dev/null bs=24 count=1 2>/dev/null; else echo "tiny-init: no power button" > /dev/console; while :; do sleep 3600; done; fi
echo "tiny-init: power button, powering off" > /dev/console
kill -TERM -1 2>/dev/null; sync; poweroff -f
EOF
chmod +x root/init root/etc/udhcpc.script
mkdir -p root/etc/udhcpc   # udhcpc's own default (Debian's path): a later DHCP (a warm clone's)
ln -sf /etc/udhcpc.script root/etc/udhcpc/default.script
(cd root && find . | ../$BB cpio -o -H newc 2>/dev/null) > initrd.img
echo "initramfs: $(du -h initrd.img | cut -f1) uncompressed cpio"

for f in vmlinuz initrd.img; do mv "$W/$f" "$OUT/$f"; done
