#!/usr/bin/env bash
# Boot the test VM, run GUEST_SCRIPT inside it (as /guest/run.sh, via /bin/sh),
# stream its console output, and exit with the guest script's exit status.
#
# Usage: ../shared/vm/run.sh GUEST_SCRIPT
#        ../shared/vm/run.sh --shell           (interactive busybox shell)
#
# Environment (all optional):
#   VM_CACHE      dir with vmlinuz + initramfs.cpio from build.sh (~/.cache/zonestore-vm)
#   VM_MEM        guest RAM (2G)            VM_CPUS   guest vCPUs (2)
#   VM_TIMEOUT    seconds before the VM is killed (300)
#   VM_ZNS        1 = attach an emulated NVMe ZNS namespace (/dev/nvme0n1) (1)
#   VM_ZNS_SIZE   namespace size (1G)       VM_ZONE_SIZE  zone size, power of 2 (64M)
#   VM_ZONE_CAP   zone capacity, 0 = zone size (0)
#   VM_MAX_OPEN / VM_MAX_ACTIVE   zone resource limits (16 / 16)
#   VM_LBS        logical block size (4096)
#   VM_HOSTFWD    "HOSTPORT:GUESTPORT ..."  host 127.0.0.1:HOSTPORT -> guest :GUESTPORT
#   VM_GUESTFWD   "GUESTPORT:HOSTPORT ..."  guest 10.0.2.100:GUESTPORT -> host 127.0.0.1:HOSTPORT
#                 (one `busybox nc` per TCP connection; multi-connection safe)
#   VM_RESTRICT   on|off slirp isolation (on). With "off" the guest may also
#                 reach host loopback as 10.0.2.2:PORT, but it could then reach
#                 any address the host can: keep "on" unless you need it.
#   VM_SHARE      host dir exported read-write to the guest at /mnt/share (9p)
#   VM_ACCEL      auto|kvm|tcg (auto: kvm if /dev/kvm is usable and not kvm_pvm)
#   VM_CPU        -cpu model (host for kvm, max for tcg)
#   VM_APPEND     extra kernel command line   VM_QEMU_EXTRA  extra qemu args (word-split)
#   VM_LOG        also write the console log to this file
set -euo pipefail

CACHE=${VM_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/zonestore-vm}
[ $# -ge 1 ] || { sed -n '2,27p' "$0"; exit 2; }
[ -f "$CACHE/initramfs.cpio" ] || { echo "run.sh: run tests/vm/build.sh first" >&2; exit 2; }

T=$(mktemp -d -t vmrun.XXXXXX)
cleanup() { rm -rf "$T"; }
trap cleanup EXIT
trap 'exit 143' TERM INT

APPEND="console=ttyS0 quiet panic=-1 ${VM_APPEND:-}"
[ -z "${VM_SHARE:-}" ] || APPEND+=" vm.share"
if [ "$1" = "--shell" ]; then
    APPEND+=" vm.shell"
    cp "$CACHE/initramfs.cpio" "$T/initrd"
else
    mkdir -p "$T/extra/guest"
    cp "$1" "$T/extra/guest/run.sh"
    cp "$(dirname "$0")"/guest/lib-*.sh "$T/extra/guest/"   # helpers, sourced by scripts
    (cd "$T/extra" && find . | cpio -o -H newc --quiet) > "$T/extra.cpio"
    cat "$CACHE/initramfs.cpio" "$T/extra.cpio" > "$T/initrd"
fi

kernel=$CACHE/vmlinux; [ -f "$kernel" ] || kernel=$CACHE/vmlinuz
args=(-M q35 -m "${VM_MEM:-2G}" -smp "${VM_CPUS:-2}"
      -kernel "$kernel" -initrd "$T/initrd" -append "$APPEND"
      -display none -vga none -serial stdio -monitor none -no-reboot
      -device virtio-rng-pci)
accel=${VM_ACCEL:-auto}
if [ "$accel" = auto ]; then
    # /dev/kvm backed by kvm_pvm (nested "PVM", as on these machines)
    # only runs PVM-enabled guest kernels; a stock kernel crawls there. Use TCG.
    if [ -w /dev/kvm ] && [ ! -d /sys/module/kvm_pvm ]; then accel=kvm; else accel=tcg; fi
fi
if [ "$accel" = kvm ]; then args+=(-enable-kvm -cpu "${VM_CPU:-host}")
else args+=(-accel tcg,thread=multi -cpu "${VM_CPU:-max}"); fi

net="user,id=n0,restrict=${VM_RESTRICT:-on}"
for f in ${VM_HOSTFWD:-}; do net+=",hostfwd=tcp:127.0.0.1:${f%%:*}-:${f##*:}"; done
for f in ${VM_GUESTFWD:-}; do net+=",guestfwd=tcp:10.0.2.100:${f%%:*}-cmd:busybox nc 127.0.0.1 ${f##*:}"; done
args+=(-netdev "$net" -device virtio-net-pci,netdev=n0)

if [ "${VM_ZNS:-1}" = 1 ]; then
    truncate -s "${VM_ZNS_SIZE:-1G}" "$T/zns.img"
    lbs=${VM_LBS:-4096}
    args+=(-drive "file=$T/zns.img,id=zns0,format=raw,if=none,cache=unsafe"
           -device "nvme,id=nvme0,serial=zns0001,zoned.zasl=5"
           -device "nvme-ns,drive=zns0,bus=nvme0,nsid=1,logical_block_size=$lbs,physical_block_size=$lbs,zoned=on,zoned.zone_size=${VM_ZONE_SIZE:-64M},zoned.zone_capacity=${VM_ZONE_CAP:-0},zoned.max_open=${VM_MAX_OPEN:-16},zoned.max_active=${VM_MAX_ACTIVE:-16}")
fi
if [ -n "${VM_SHARE:-}" ]; then
    args+=(-virtfs "local,path=$VM_SHARE,mount_tag=share,security_model=none")
fi
# shellcheck disable=SC2206
args+=(${VM_QEMU_EXTRA:-})

if [ "$1" = "--shell" ]; then
    exec qemu-system-x86_64 "${args[@]}"
fi

start=$(date +%s.%N)
# --foreground keeps qemu in this script's process group, so killing the group ends the VM.
timeout --foreground -k 5 "${VM_TIMEOUT:-300}" qemu-system-x86_64 "${args[@]}" </dev/null 2>&1 \
    | sed -u 's/\r$//' | tee "$T/console.log" ${VM_LOG:+"$VM_LOG"} || true
end=$(date +%s.%N)
rc=$(sed -n 's/.*@@GUEST_EXIT=\([0-9]*\)@@.*/\1/p' "$T/console.log" | tail -1)
awk -v s="$start" -v e="$end" -v r="${rc:-none (crash/timeout)}" \
    'BEGIN{printf "run.sh: VM wall time %.2fs, guest exit %s\n", e-s, r}' >&2
exit "${rc:-124}"
