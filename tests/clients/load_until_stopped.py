#!/usr/bin/env python3
"""Uploads objects from several threads until the server stops answering, recording each PUT
that was acknowledged (HTTP 200) with its MD5, one per line, flushed at once, to the file given
as the first argument. Usage: load_until_stopped.py ACKED_FILE BUCKET [THREADS] [SIZE]."""

import hashlib
import os
import sys
import threading

import boto3
from botocore.config import Config

acked_path, bucket = sys.argv[1], sys.argv[2]
threads = int(sys.argv[3]) if len(sys.argv) > 3 else 8
size = int(sys.argv[4]) if len(sys.argv) > 4 else 256 * 1024
lock = threading.Lock()
acked = open(acked_path, "a", buffering=1)
stop = threading.Event()


def worker(n):
    s3 = boto3.client(
        "s3",
        endpoint_url=os.environ["ENDPOINT"],
        region_name="us-east-1",
        config=Config(retries={"max_attempts": 1}, connect_timeout=2, read_timeout=30),
    )
    i = 0
    while not stop.is_set():
        key = f"t{n}/obj-{i:06d}"
        body = os.urandom(size - (i % 7) * 1000)
        try:
            s3.put_object(Bucket=bucket, Key=key, Body=body)
        except Exception as e:  # the server went away: stop this worker
            print(f"worker {n}: stopped after {i} objects: {type(e).__name__}", flush=True)
            return
        with lock:
            acked.write(f"{key} {hashlib.md5(body).hexdigest()} {len(body)}\n")
            acked.flush()
            os.fsync(acked.fileno())
        i += 1


ts = [threading.Thread(target=worker, args=(n,)) for n in range(threads)]
for t in ts:
    t.start()
for t in ts:
    t.join()
