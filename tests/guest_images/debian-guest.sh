#!/bin/bash
# Builds qemu-compose's test guest: a small Debian 12 image with the real cloud-init, made
# from Debian packages with mmdebstrap, no root filesystem mounts, no loop devices.
#   root.qcow2   ext4 root filesystem (label rootfs), no partition table, no bootloader
#   vmlinuz, initrd.img   boot it with: root=LABEL=rootfs rw console=ttyS0
# usage: debian-guest.sh OUTDIR        deps: mmdebstrap qemu-utils e2fsprogs
# Tuned for TCG (no KVM): cloud-init limited to NoCloud and the modules qemu-compose uses,
# no timers, volatile journal, an initramfs with only what mounting root needs.
set -euo pipefail
OUT=$1
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
WORK=$(mktemp -d "$OUT/.build.XXXXXX")
trap 'rm -rf "$WORK"' EXIT

cat > "$WORK/hook.sh" <<'HOOK'
#!/bin/sh
set -e
R="$1"
echo localhost > "$R/etc/hostname"
printf 'LABEL=rootfs / ext4 defaults,discard,errors=remount-ro 0 1\n' > "$R/etc/fstab"
: > "$R/etc/machine-id"; rm -f "$R/var/lib/dbus/machine-id"
rm -f "$R"/etc/ssh/ssh_host_*
mkdir -p "$R/etc/systemd/network"
printf '[Match]\nName=en* eth*\n[Network]\nDHCP=yes\n' > "$R/etc/systemd/network/99-fallback-dhcp.network"
chroot "$R" systemctl enable systemd-networkd.service systemd-resolved.service >/dev/null 2>&1
# resolved routes <vm>.<project> to the bridge's dnsmasq (the DHCP search domain) and the rest
# to the user-mode NIC's resolver
ln -sf /run/systemd/resolve/stub-resolv.conf "$R/etc/resolv.conf"
mkdir -p "$R/etc/systemd/resolved.conf.d"
printf '[Resolve]\nLLMNR=no\nMulticastDNS=no\n' > "$R/etc/systemd/resolved.conf.d/no-multicast.conf"
cat > "$R/etc/cloud/cloud.cfg.d/90-qemu-compose.cfg" <<'CFG'
datasource_list: [ NoCloud ]
locale: false
manage_etc_hosts: localhost
ssh_genkeytypes: [ ed25519 ]
cloud_init_modules: [ bootcmd, write_files, mounts, set_hostname, update_hostname, update_etc_hosts, users_groups, ssh ]
cloud_config_modules: [ set_passwords, runcmd ]
cloud_final_modules: [ scripts_per_instance, scripts_user, final_message ]
CFG
for K in "$R"/usr/lib/modules/*/kernel; do
  rm -rf "$K"/sound "$K"/drivers/gpu "$K"/drivers/media "$K"/drivers/net/wireless "$K"/drivers/infiniband \
         "$K"/drivers/staging "$K"/drivers/bluetooth "$K"/net/wireless "$K"/net/bluetooth "$K"/net/mac80211 \
         "$K"/drivers/usb "$K"/drivers/hid "$K"/drivers/isdn "$K"/drivers/net/ethernet "$K"/drivers/iio \
         "$K"/drivers/hwmon "$K"/drivers/mtd "$K"/drivers/video/fbdev "$K"/fs/ocfs2 "$K"/fs/gfs2
done
for V in $(ls "$R"/usr/lib/modules); do chroot "$R" depmod -a "$V"; done
# no timers, hotplug or pstore; volatile journal; wait-online for any link; the serial
# console keeps its getty (qemu-compose's console password logs in there)
chroot "$R" systemctl mask apt-daily.timer apt-daily-upgrade.timer dpkg-db-backup.timer e2scrub_all.timer \
  fstrim.timer systemd-tmpfiles-clean.timer e2scrub_reap.service getty@tty1.service \
  cloud-init-hotplugd.socket systemd-pstore.service systemd-network-generator.service >/dev/null 2>&1 || true
mkdir -p "$R/etc/systemd/journald.conf.d" "$R/etc/systemd/system/systemd-networkd-wait-online.service.d"
printf '[Journal]\nStorage=volatile\n' > "$R/etc/systemd/journald.conf.d/volatile.conf"
printf '[Service]\nExecStart=\nExecStart=/lib/systemd/systemd-networkd-wait-online --any --timeout=30\n' \
  > "$R/etc/systemd/system/systemd-networkd-wait-online.service.d/any.conf"
printf 'HostKey /etc/ssh/ssh_host_ed25519_key\nUseDNS no\nGSSAPIAuthentication no\n' > "$R/etc/ssh/sshd_config.d/fast.conf"
sed -i 's/^MODULES=.*/MODULES=list/' "$R/etc/initramfs-tools/initramfs.conf"
printf 'virtio_pci\nvirtio_blk\next4\ncrc32c_generic\n' >> "$R/etc/initramfs-tools/modules"
chroot "$R" update-initramfs -u -k all >/dev/null 2>&1
rm -rf "$R"/var/cache/apt/*.bin "$R"/var/lib/apt/lists/* "$R"/var/log/*.log
HOOK
chmod +x "$WORK/hook.sh"

SOURCES=/etc/apt/sources.list.d/debian.sources
[ -f "$SOURCES" ] || SOURCES=/etc/apt/sources.list
mmdebstrap --quiet --variant=minbase --components=main \
  --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-exclude=/usr/share/man/*' \
  --dpkgopt='path-exclude=/usr/share/locale/*' --dpkgopt='path-include=/usr/share/locale/locale.alias' \
  --dpkgopt='path-exclude=/usr/share/info/*' --dpkgopt='path-exclude=/usr/lib/firmware/*' \
  --include=linux-image-amd64,systemd-sysv,systemd-resolved,udev,dbus,openssh-server,cloud-init,sudo,e2fsprogs,iproute2 \
  --customize-hook="$WORK/hook.sh \"\$1\"" \
  bookworm "$WORK/rootfs" "$SOURCES"
cp "$WORK"/rootfs/boot/vmlinuz-* "$WORK/vmlinuz"
cp "$WORK"/rootfs/boot/initrd.img-* "$WORK/initrd.img"
truncate -s 2G "$WORK/root.raw"
mkfs.ext4 -q -F -L rootfs -d "$WORK/rootfs" "$WORK/root.raw"
qemu-img convert -O qcow2 "$WORK/root.raw" "$WORK/root.qcow2"   # uncompressed: fast first reads
for f in root.qcow2 vmlinuz initrd.img; do mv "$WORK/$f" "$OUT/$f"; done
