"""Reads products from /mnt/eodata on every Dask worker: each task opens one product's zip and
lists and hashes its members, as an analysis would read bands. The mounts of all nodes share one
login and the account's 4 connections through the coordinator; a product read twice on a node
comes from that node's disk cache.

    python dask_example.py tcp://dask-scheduler:8786 NAME.SAFE.zip [NAME.SAFE.zip ...]
"""
import hashlib
import sys
import zipfile

from dask.distributed import Client


def digest(name):
    h = hashlib.sha256()
    with zipfile.ZipFile(f"/mnt/eodata/{name}") as z:
        for member in z.namelist():
            with z.open(member) as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    h.update(chunk)
    return name, h.hexdigest()


if __name__ == "__main__":
    client = Client(sys.argv[1])
    for name, sha in client.gather(client.map(digest, sys.argv[2:])):
        print(sha, name)
