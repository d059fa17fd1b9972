#!/bin/sh
# The kernel's nvmet-tcp target exports the VM's emulated ZNS namespace on :4420, for a host
# outside the VM (our NVMe/TCP host, through a host port forward); then waits until that host
# says it is done (a connection to guest port 5000). Prefixed with NQN=... by the test.
. /guest/lib-nvmet.sh
nvmet_export /dev/nvme0n1 "$NQN" 4420 || { echo "nvmet export FAILED"; dmesg | tail; exit 1; }
echo "kernel target: zoned=$(cat /sys/block/nvme0n1/queue/zoned) nr_zones=$(cat /sys/block/nvme0n1/queue/nr_zones)"
echo "@@TARGET_READY@@"
timeout "${WAIT_HOST_S:-240}" nc -l -p 5000 </dev/null && echo "host said done" || { echo "no host signal"; exit 1; }
dmesg | grep -i nvmet | tail -5
