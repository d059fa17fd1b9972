#!/usr/bin/env python3
"""A training-data pipeline against Zonestore: write a sharded dataset (tar shards of samples)
through boto3, then read it back the way a data loader does -- a pool of workers issuing
concurrent range GETs over the shards, --range-mib each (loaders use 8-16 MiB; or s3fs/fsspec
with --fsspec) -- and print MB/s and samples/s, next to the same reads from the local shard files
(preads of the same bytes in the same run, which the page cache serves: the shards were just
written).

    export AWS_ACCESS_KEY_ID=... AWS_SECRET_ACCESS_KEY=...
    python examples/dataset.py --endpoint http://127.0.0.1:9000 --shards 8 --shard-mib 128

Needs boto3 (and s3fs for --fsspec): `scripts/install-deps.sh` puts them in .venv.
"""

import argparse
import concurrent.futures
import io
import os
import random
import tarfile
import tempfile
import threading
import time

import boto3
from boto3.s3.transfer import TransferConfig
from botocore.config import Config


def make_shard(path, shard, shard_bytes, sample_bytes):
    """Writes a tar shard of random samples (like WebDataset shards); returns the sample count."""
    count = 0
    with tarfile.open(path, "w") as tar:
        written = 0
        while written + sample_bytes + 1024 <= shard_bytes:
            data = os.urandom(sample_bytes)
            info = tarfile.TarInfo(f"{shard:05d}/{count:07d}.bin")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
            written += sample_bytes + 512
            count += 1
    return count


def plan_ranges(sizes, range_bytes, seed):
    """(shard, start, end) tasks covering every shard, shuffled as a loader would."""
    tasks = []
    for shard, size in enumerate(sizes):
        for start in range(0, size, range_bytes):
            tasks.append((shard, start, min(size, start + range_bytes) - 1))
    random.Random(seed).shuffle(tasks)
    return tasks


def timed_read(tasks, workers, read):
    started = time.perf_counter()
    total = 0
    lock = threading.Lock()

    def run(task):
        nonlocal total
        n = read(*task)
        with lock:
            total += n

    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        list(pool.map(run, tasks))
    return total, time.perf_counter() - started


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--endpoint", default=os.environ.get("ENDPOINT", "http://127.0.0.1:9000"))
    p.add_argument("--bucket", default="dataset")
    p.add_argument("--shards", type=int, default=8)
    p.add_argument("--shard-mib", type=int, default=128)
    p.add_argument("--sample-kib", type=int, default=112, help="sample size (e.g. a JPEG)")
    p.add_argument("--range-mib", type=int, default=12, help="range GET size, 8-16 MiB in loaders")
    p.add_argument("--workers", type=int, default=16)
    p.add_argument("--local-dir", default=None, help="where shards are staged (default: a temp dir)")
    p.add_argument("--fsspec", action="store_true", help="read through s3fs/fsspec instead of boto3")
    p.add_argument("--ca-bundle", default=None)
    args = p.parse_args()

    s3 = boto3.client(
        "s3",
        endpoint_url=args.endpoint,
        region_name="us-east-1",
        verify=args.ca_bundle or True,
        config=Config(max_pool_connections=args.workers * 2, retries={"max_attempts": 3}),
    )
    try:
        s3.create_bucket(Bucket=args.bucket)
    except s3.exceptions.BucketAlreadyOwnedByYou:
        pass

    # A staging directory of our own goes when the run ends; one given is kept.
    own_staging = None if args.local_dir else tempfile.TemporaryDirectory(prefix="zonestore-dataset-")
    staging = args.local_dir or own_staging.name
    os.makedirs(staging, exist_ok=True)
    shard_bytes = args.shard_mib << 20
    sample_bytes = args.sample_kib << 10
    paths, samples = [], 0
    for shard in range(args.shards):
        path = os.path.join(staging, f"shard-{shard:05d}.tar")
        samples += make_shard(path, shard, shard_bytes, sample_bytes)
        paths.append(path)
    sizes = [os.path.getsize(path) for path in paths]
    total = sum(sizes)

    # Write: boto3's managed multipart upload, shards in parallel.
    transfer = TransferConfig(multipart_threshold=16 << 20, multipart_chunksize=16 << 20, max_concurrency=4)
    started = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda i: s3.upload_file(paths[i], args.bucket, f"train/shard-{i:05d}.tar", Config=transfer), range(args.shards)))
    write_s = time.perf_counter() - started

    range_bytes = args.range_mib << 20
    tasks = plan_ranges(sizes, range_bytes, seed=1)

    if args.fsspec:
        import fsspec

        fs = fsspec.filesystem(
            "s3",
            client_kwargs={"endpoint_url": args.endpoint, "region_name": "us-east-1", "verify": args.ca_bundle or True},
            default_block_size=range_bytes,
        )

        def read_remote(shard, start, end):
            return len(fs.cat_file(f"{args.bucket}/train/shard-{shard:05d}.tar", start=start, end=end + 1))

    else:

        def read_remote(shard, start, end):
            body = s3.get_object(Bucket=args.bucket, Key=f"train/shard-{shard:05d}.tar", Range=f"bytes={start}-{end}")["Body"]
            n = 0
            while True:
                chunk = body.read(1 << 20)
                if not chunk:
                    return n
                n += len(chunk)

    def read_local(shard, start, end):
        with open(paths[shard], "rb") as f:
            return len(os.pread(f.fileno(), end - start + 1, start))

    # Verify one range's bytes before timing anything.
    probe = tasks[0]
    with open(paths[probe[0]], "rb") as f:
        expected = os.pread(f.fileno(), probe[2] - probe[1] + 1, probe[1])
    got = s3.get_object(Bucket=args.bucket, Key=f"train/shard-{probe[0]:05d}.tar", Range=f"bytes={probe[1]}-{probe[2]}")["Body"].read()
    assert got == expected, "a range read back differs from what was written"

    raw_bytes, raw_s = timed_read(tasks, args.workers, read_local)
    read_bytes, read_s = timed_read(tasks, args.workers, read_remote)
    assert read_bytes == total and raw_bytes == total

    mb = 1e6
    print(f"dataset: {args.shards} shards x {args.shard_mib} MiB, {samples} samples of {args.sample_kib} KiB, {len(tasks)} range reads of {args.range_mib} MiB by {args.workers} workers ({'fsspec' if args.fsspec else 'boto3'})")
    print(f"write:  {total / write_s / mb:8.1f} MB/s")
    print(f"read:   {read_bytes / read_s / mb:8.1f} MB/s  {samples / read_s:9.0f} samples/s")
    print(f"raw:    {raw_bytes / raw_s / mb:8.1f} MB/s  {samples / raw_s:9.0f} samples/s  (local files, same reads)")
    print(f"ratio:  {(read_bytes / read_s) / (raw_bytes / raw_s):.3f}  (Zonestore / raw)")
    if own_staging is not None:
        own_staging.cleanup()


if __name__ == "__main__":
    main()
