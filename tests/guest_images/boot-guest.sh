#!/bin/bash
# Builds qemu-compose's second test guest, shaped like Debian 12's own cloud images: a whole
# disk that boots through firmware and its own bootloader, networking by ifupdown + dhclient
# (cloud-init's ENI renderer), no systemd-resolved, root grown by cloud-init's growpart.
# Made from Debian packages with mmdebstrap, mkfs -d, mtools and sfdisk on plain files: no
# root filesystem mounts, no loop devices.
#   debian-12-boot.qcow2   a GPT disk (named as Debian names its images: user debian):
#     1 BIOS boot partition: GRUB's core image, for SeaBIOS
#     2 EFI system partition: systemd-boot, the kernel and the initrd, for OVMF
#     3 ext4 root (label rootfs), last on the disk so that it can grow
# usage: boot-guest.sh OUTDIR     deps: mmdebstrap qemu-utils e2fsprogs dosfstools mtools fdisk
set -euo pipefail
OUT=$1
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
WORK=$(mktemp -d "$OUT/.build.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
CMDLINE="root=LABEL=rootfs ro console=ttyS0"

cat > "$WORK/hook.sh" <<'HOOK'
#!/bin/sh
set -e
R="$1"
CMDLINE="$2"
W="$3"  # where the boot files go (outside the root filesystem)
echo localhost > "$R/etc/hostname"
printf 'LABEL=rootfs / ext4 defaults,discard,errors=remount-ro 0 1\n' > "$R/etc/fstab"
: > "$R/etc/machine-id"; rm -f "$R/var/lib/dbus/machine-id"
rm -f "$R"/etc/ssh/ssh_host_*
# ifupdown as on Debian's cloud images: cloud-init writes interfaces.d from the seed's
# network-config; dhclient writes /etc/resolv.conf
printf 'auto lo\niface lo inet loopback\n\nsource /etc/network/interfaces.d/*\n' > "$R/etc/network/interfaces"
mkdir -p "$R/etc/network/interfaces.d"
cat > "$R/etc/cloud/cloud.cfg.d/90-qemu-compose.cfg" <<'CFG'
datasource_list: [ NoCloud ]
locale: false
manage_etc_hosts: localhost
ssh_genkeytypes: [ ed25519 ]
cloud_init_modules: [ bootcmd, write_files, growpart, resizefs, mounts, set_hostname, update_hostname, update_etc_hosts, users_groups, ssh ]
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
chroot "$R" systemctl mask apt-daily.timer apt-daily-upgrade.timer dpkg-db-backup.timer e2scrub_all.timer \
  fstrim.timer systemd-tmpfiles-clean.timer e2scrub_reap.service getty@tty1.service \
  cloud-init-hotplugd.socket systemd-pstore.service >/dev/null 2>&1 || true
mkdir -p "$R/etc/systemd/journald.conf.d"
printf '[Journal]\nStorage=volatile\n' > "$R/etc/systemd/journald.conf.d/volatile.conf"
printf 'HostKey /etc/ssh/ssh_host_ed25519_key\nUseDNS no\nGSSAPIAuthentication no\n' > "$R/etc/ssh/sshd_config.d/fast.conf"
# an initramfs with what finds root on a virtio disk's GPT partition
sed -i 's/^MODULES=.*/MODULES=list/' "$R/etc/initramfs-tools/initramfs.conf"
printf 'virtio_pci\nvirtio_blk\next4\ncrc32c_generic\n' >> "$R/etc/initramfs-tools/modules"
chroot "$R" update-initramfs -u -k all >/dev/null 2>&1
V=$(ls "$R"/usr/lib/modules | head -n1)
# BIOS: GRUB's core image with its configuration built in (it finds root by its label)
mkdir -p "$R/tmp/grub" "$W/grub"
cat > "$R/tmp/grub/early.cfg" <<CFG
search --no-floppy --label --set=root rootfs
linux /boot/vmlinuz-$V $CMDLINE
initrd /boot/initrd.img-$V
boot
CFG
chroot "$R" grub-mkimage -O i386-pc -o /tmp/grub/core.img -c /tmp/grub/early.cfg -p /boot/grub \
  biosdisk part_gpt ext2 search search_label linux boot
mv "$R/tmp/grub/core.img" "$W/grub/core.img"
rm -rf "$R/tmp/grub"
cp "$R/usr/lib/grub/i386-pc/boot.img" "$W/grub/boot.img"
# UEFI: systemd-boot, with the kernel and initrd on the EFI system partition
mkdir -p "$W/esp/loader/entries"
printf 'default debian.conf\ntimeout 0\n' > "$W/esp/loader/loader.conf"
printf 'title Debian\nlinux /vmlinuz\ninitrd /initrd.img\noptions %s\n' "$CMDLINE" \
  > "$W/esp/loader/entries/debian.conf"
cp "$R/usr/lib/systemd/boot/efi/systemd-bootx64.efi" "$W/esp/BOOTX64.EFI"
cp "$R/boot/vmlinuz-$V" "$W/esp/vmlinuz"
cp "$R/boot/initrd.img-$V" "$W/esp/initrd.img"
rm -rf "$R"/var/cache/apt/*.bin "$R"/var/lib/apt/lists/* "$R"/var/log/*.log
HOOK
chmod +x "$WORK/hook.sh"

SOURCES=/etc/apt/sources.list.d/debian.sources
[ -f "$SOURCES" ] || SOURCES=/etc/apt/sources.list
mmdebstrap --quiet --variant=minbase --components=main \
  --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-exclude=/usr/share/man/*' \
  --dpkgopt='path-exclude=/usr/share/locale/*' --dpkgopt='path-include=/usr/share/locale/locale.alias' \
  --dpkgopt='path-exclude=/usr/share/info/*' --dpkgopt='path-exclude=/usr/lib/firmware/*' \
  --include=linux-image-amd64,systemd-sysv,udev,dbus,openssh-server,cloud-init,sudo,e2fsprogs,iproute2,ifupdown,isc-dhcp-client,cloud-guest-utils,fdisk,grub-pc-bin,systemd-boot-efi \
  --customize-hook="$WORK/hook.sh \"\$1\" \"$CMDLINE\" \"$WORK\"" \
  bookworm "$WORK/rootfs" "$SOURCES"

# the disk, in 512-byte sectors: the partitions' images written at their offsets
SIZE_MIB=2048
BIOS_START=2048 BIOS_SECTORS=2048        # 1 MiB
ESP_START=4096 ESP_SECTORS=262144        # 128 MiB
ROOT_START=$((ESP_START + ESP_SECTORS))
ROOT_SECTORS=$((SIZE_MIB * 2048 - ROOT_START - 2048))  # the last MiB: the GPT's backup and slack
truncate -s "${SIZE_MIB}M" "$WORK/disk.raw"
sfdisk --quiet --no-reread --no-tell-kernel "$WORK/disk.raw" <<EOF
label: gpt
start=$BIOS_START, size=$BIOS_SECTORS, type=21686148-6449-6E6F-744E-656564454649, name=bios
start=$ESP_START, size=$ESP_SECTORS, type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B, name=esp
start=$ROOT_START, size=$ROOT_SECTORS, type=4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709, name=root
EOF

mkfs.vfat -C -n ESP "$WORK/esp.img" $((ESP_SECTORS / 2)) >/dev/null
mmd -i "$WORK/esp.img" ::/EFI ::/EFI/BOOT ::/loader ::/loader/entries
mcopy -i "$WORK/esp.img" "$WORK/esp/BOOTX64.EFI" ::/EFI/BOOT/BOOTX64.EFI
mcopy -i "$WORK/esp.img" "$WORK/esp/vmlinuz" "$WORK/esp/initrd.img" ::/
mcopy -i "$WORK/esp.img" "$WORK/esp/loader/loader.conf" ::/loader/
mcopy -i "$WORK/esp.img" "$WORK/esp/loader/entries/debian.conf" ::/loader/entries/
place() {  # place IMAGE SECTOR: written into the disk at that sector, its holes kept
  dd if="$1" of="$WORK/disk.raw" bs=1M seek=$(($2 * 512)) oflag=seek_bytes conv=notrunc,sparse status=none
}
place "$WORK/esp.img" $ESP_START

truncate -s $((ROOT_SECTORS * 512)) "$WORK/root.img"
mkfs.ext4 -q -F -L rootfs -d "$WORK/rootfs" "$WORK/root.img"
place "$WORK/root.img" $ROOT_START

# GRUB for BIOS, placed as grub-bios-setup would: boot.img's code in the protective MBR (its
# partition table kept) pointing at the core image's first sector, whose block list names
# the rest; the drive check made a no-op, as for a hard disk
python3 - "$WORK/disk.raw" "$WORK/grub/boot.img" "$WORK/grub/core.img" "$BIOS_START" "$BIOS_SECTORS" <<'PY'
import struct, sys
disk, boot_img, core_img, start, sectors = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
boot = bytearray(open(boot_img, "rb").read())
core = bytearray(open(core_img, "rb").read())
n = (len(core) + 511) // 512
assert n <= sectors, f"core image of {n} sectors does not fit in {sectors}"
with open(disk, "r+b") as f:
    mbr = bytearray(f.read(512))
    mbr[0:0x1B8] = boot[0:0x1B8]  # the code; 0x1b8-0x200 (signature, partitions) stay
    struct.pack_into("<Q", mbr, 0x5C, start)  # where the core image starts
    mbr[0x66:0x68] = b"\x90\x90"  # the boot drive check: nop nop
    start_, length, segment = struct.unpack_from("<QHH", core, 0x200 - 12)
    assert length == n - 1, (length, n)  # grub-mkimage counted the sectors after the first
    struct.pack_into("<QHH", core, 0x200 - 12, start + 1, length, segment)
    f.seek(0)
    f.write(mbr)
    f.seek(start * 512)
    f.write(core)
PY

qemu-img convert -O qcow2 "$WORK/disk.raw" "$WORK/debian-12-boot.qcow2"   # uncompressed: fast first reads
mv "$WORK/debian-12-boot.qcow2" "$OUT/debian-12-boot.qcow2"
