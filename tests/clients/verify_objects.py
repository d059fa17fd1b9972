#!/usr/bin/env python3
"""Checks that every object listed in ACKED_FILE (key md5 size per line) reads back whole and
byte-exact. Usage: verify_objects.py ACKED_FILE BUCKET. Prints the count verified."""

import concurrent.futures
import hashlib
import os
import sys

import boto3

acked_path, bucket = sys.argv[1], sys.argv[2]
entries = [line.split() for line in open(acked_path) if line.strip()]
s3 = boto3.client("s3", endpoint_url=os.environ["ENDPOINT"], region_name="us-east-1")


def check(entry):
    key, md5, size = entry
    body = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
    assert len(body) == int(size), f"{key}: {len(body)} bytes, acknowledged {size}"
    assert hashlib.md5(body).hexdigest() == md5, f"{key}: wrong content"
    return key


with concurrent.futures.ThreadPoolExecutor(8) as pool:
    done = list(pool.map(check, entries))
listed = set()
for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
    for o in page.get("Contents", []):
        listed.add(o["Key"])
missing = [k for k, _, _ in entries if k not in listed]
assert not missing, f"acknowledged but not listed: {missing[:5]}"
print(f"verified {len(done)} acknowledged objects")
