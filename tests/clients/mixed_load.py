#!/usr/bin/env python3
"""Continuous mixed load until STOP_FILE exists: writers PUT new objects (recording each
acknowledged one with its MD5 in ACKED_FILE), readers GET acknowledged objects and check them.
Prints a summary line `puts_ok=N puts_failed=N gets_ok=N gets_failed=N slowest_put=S
slowest_get=S` (the longest request of each kind, in seconds) and the first errors.
Usage: mixed_load.py ACKED_FILE BUCKET STOP_FILE [WRITERS] [READERS] [SIZE]."""

import hashlib
import os
import random
import sys
import threading
import time

import boto3
from botocore.config import Config

acked_path, bucket, stop_path = sys.argv[1], sys.argv[2], sys.argv[3]
writers = int(sys.argv[4]) if len(sys.argv) > 4 else 3
readers = int(sys.argv[5]) if len(sys.argv) > 5 else 3
size = int(sys.argv[6]) if len(sys.argv) > 6 else 200_000
lock = threading.Lock()
acked = []
counts = {"puts_ok": 0, "puts_failed": 0, "gets_ok": 0, "gets_failed": 0}
errors = []
slowest = {"slowest_put": 0.0, "slowest_get": 0.0}
out = open(acked_path, "a", buffering=1)


def client():
    return boto3.client(
        "s3",
        endpoint_url=os.environ["ENDPOINT"],
        region_name="us-east-1",
        config=Config(retries={"max_attempts": 1}, connect_timeout=5, read_timeout=60),
    )


def stopped():
    return os.path.exists(stop_path)


def writer(n):
    s3 = client()
    i = 0
    while not stopped():
        key = f"w{n}/obj-{i:06d}"
        body = os.urandom(size + random.randint(0, 50_000))
        began = time.monotonic()
        try:
            s3.put_object(Bucket=bucket, Key=key, Body=body)
            took = time.monotonic() - began
            with lock:
                slowest["slowest_put"] = max(slowest["slowest_put"], took)
        except Exception as e:
            with lock:
                counts["puts_failed"] += 1
                errors.append(f"PUT {key}: {e}")
            time.sleep(0.2)
            continue
        md5 = hashlib.md5(body).hexdigest()
        with lock:
            counts["puts_ok"] += 1
            acked.append((key, md5))
            out.write(f"{key} {md5} {len(body)}\n")
        i += 1


def reader(n):
    s3 = client()
    while not stopped():
        with lock:
            pick = random.choice(acked) if acked else None
        if pick is None:
            time.sleep(0.05)
            continue
        key, md5 = pick
        began = time.monotonic()
        try:
            body = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
            ok = hashlib.md5(body).hexdigest() == md5
            took = time.monotonic() - began
            with lock:
                slowest["slowest_get"] = max(slowest["slowest_get"], took)
        except Exception as e:
            ok = False
            with lock:
                errors.append(f"GET {key}: {e}")
        with lock:
            if ok:
                counts["gets_ok"] += 1
            else:
                counts["gets_failed"] += 1
                errors.append(f"GET {key}: wrong content") if len(errors) < 50 else None


threads = [threading.Thread(target=writer, args=(n,)) for n in range(writers)]
threads += [threading.Thread(target=reader, args=(n,)) for n in range(readers)]
for t in threads:
    t.start()
for t in threads:
    t.join()
print(
    " ".join(f"{k}={v}" for k, v in counts.items()),
    " ".join(f"{k}={v:.2f}" for k, v in slowest.items()),
    flush=True,
)
for e in errors[:10]:
    print("error:", e)
