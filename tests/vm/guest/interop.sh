#!/bin/sh
# Kernel NVMe/TCP host in the guest against a zonestore target on the host's loopback, reached
# at 10.0.2.100:4420 (guestfwd). Inputs are prepended as variable assignments by the caller:
# NQN, ZONES (expected zone count), ZONE_BYTES, CAP_BYTES (zone capacity), FIO_BYTES.
. /guest/lib-nvmet.sh
set -u
fail() { echo "INTEROP FAIL: $*"; exit 1; }
TADDR=10.0.2.100 TPORT=4420
modprobe nvme-tcp || fail "no nvme-tcp module"

out=$(nvme discover -t tcp -a $TADDR -s $TPORT) || fail "discover"
echo "$out" | grep -q "subnqn: *nqn.2014-08.org.nvmexpress.discovery" || fail "discovery log lacks the discovery subsystem"
echo "$out" | grep -q "subnqn: *$NQN" || fail "discovery log lacks $NQN"
echo "discovery: ok"

nvme connect -t tcp -a $TADDR -s $TPORT -n "$NQN" || fail "connect"
dev=
for i in $(seq 1 40); do
    for b in /sys/block/nvme*n*; do
        [ -e "$b/device/subsysnqn" ] && grep -q "$NQN" "$b/device/subsysnqn" 2>/dev/null && dev=$(basename "$b")
        [ -z "$dev" ] && [ -e "$b" ] && [ "$(cat $b/queue/zoned 2>/dev/null)" = host-managed ] && [ "$b" != /sys/block/nvme0n1 ] && dev=$(basename "$b")
    done
    [ -n "$dev" ] && break
    sleep 0.5
done
[ -n "$dev" ] || fail "no block device appeared"
zoned_sched
q=/sys/block/$dev/queue
echo "device $dev: zoned=$(cat $q/zoned) nr_zones=$(cat $q/nr_zones) chunk_sectors=$(cat $q/chunk_sectors) max_open=$(cat $q/max_open_zones) max_active=$(cat $q/max_active_zones) zone_append_max=$(cat $q/zone_append_max_bytes)"
[ "$(cat $q/zoned)" = host-managed ] || fail "not a host-managed zoned device"
[ "$(cat $q/nr_zones)" = "$ZONES" ] || fail "expected $ZONES zones"
[ "$(cat $q/chunk_sectors)" = "$((ZONE_BYTES / 512))" ] || fail "zone size mismatch"

report=$(blkzone report /dev/$dev) || fail "blkzone report"
[ "$(echo "$report" | wc -l)" = "$ZONES" ] || fail "blkzone lists $(echo "$report" | wc -l) zones"
echo "$report" | head -n 2
cap_hex=$(printf "0x%06x" $((CAP_BYTES / 512)))
echo "$report" | head -n 1 | grep -q "cap $cap_hex" || fail "zone capacity is not $cap_hex sectors"
echo "blkzone report: ok"

# fio writes a zone sequentially with checksummed blocks, then reads them back and verifies.
fio --name=zbd-verify --filename=/dev/$dev --ioengine=libaio --direct=1 --zonemode=zbd \
    --rw=write --bs=64k --iodepth=4 --size=1z --io_size=$FIO_BYTES \
    --verify=crc32c --do_verify=1 --verify_fatal=1 --output-format=terse --terse-version=3 > /tmp/fio.out 2>&1
rc=$?
awk -F';' 'NF>50{printf "fio zbd write+verify: %s KiB written at %s KiB/s, errors=%s\n", $47, $48, $5}' /tmp/fio.out
[ $rc = 0 ] || { cat /tmp/fio.out; fail "fio write+verify"; }
grep -q "verify" /tmp/fio.out && grep -i "bad\|mismatch" /tmp/fio.out && fail "fio reported a verify error"

# Random reads across what was written, verified again.
fio --name=zbd-readverify --filename=/dev/$dev --ioengine=libaio --direct=1 --zonemode=zbd \
    --rw=randread --bs=16k --iodepth=8 --size=1z --io_size=1m --output-format=terse --terse-version=3 > /tmp/fio2.out 2>&1 \
    || { cat /tmp/fio2.out; fail "fio random read"; }
echo "fio random read: ok"

# Zone management from the block layer: reset zone 0 and see it empty.
blkzone reset -o 0 -c 1 /dev/$dev || fail "blkzone reset"
blkzone report -o 0 -c 1 /dev/$dev | grep -q "zcond: 1(em)" || fail "zone 0 not empty after reset"
echo "blkzone reset: ok"

# Zone Append: two appends to zone 2 land back to back and are reported by the target.
zs=$((ZONE_BYTES / 4096))
dd if=/dev/urandom of=/tmp/blk bs=4096 count=1 2>/dev/null
a1=$(nvme zns zone-append /dev/$dev --zslba=$((2*zs)) --data-size=4096 --data=/tmp/blk) || fail "zone append 1"
a2=$(nvme zns zone-append /dev/$dev --zslba=$((2*zs)) --data-size=4096 --data=/tmp/blk) || fail "zone append 2"
echo "$a1 / $a2"
l1=$(echo "$a1" | sed -n 's/.*LBA \([0-9a-fx]*\).*/\1/p'); l2=$(echo "$a2" | sed -n 's/.*LBA \([0-9a-fx]*\).*/\1/p')
[ "$((0x$l1 + 1))" = "$((0x$l2))" ] || fail "appends at $l1 and $l2 are not consecutive"
dd if=/dev/$dev of=/tmp/back bs=4096 count=1 skip=$((0x$l2)) iflag=direct 2>/dev/null || fail "read back append"
cmp /tmp/blk /tmp/back || fail "appended data differs"
echo "zone append: ok"

nvme disconnect -n "$NQN" || fail "disconnect"
echo "INTEROP PASS"
