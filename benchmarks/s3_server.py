"""A real S3-compatible HTTP server on this machine: moto's standalone ``moto_server`` (``moto[server]``,
in the dev extra) on 127.0.0.1, a free port, its own folder, stopped by its process group's id. The
object-storage tests (tests/s3_server.py) and benchmarks/experiments/object_storage.py start it."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from magdi_dist.train.dist import free_port  # the one copy

CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}


def client(env: dict[str, str]):
    """A boto3 S3 client of the server ``env`` describes (not through the code under test)."""
    import boto3

    return boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"], aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
                        aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"], region_name=env["AWS_DEFAULT_REGION"])


@contextlib.contextmanager
def s3_server(workdir: Path, bucket: str = "magdi") -> Iterator[dict[str, str]]:
    """The environment a client needs (endpoint + credentials) for a fresh server with ``bucket``."""
    exe = shutil.which("moto_server", path=str(Path(sys.executable).parent)) or shutil.which("moto_server")
    if exe is None:
        raise RuntimeError("moto_server is missing: pip install 'moto[server]' (the dev extra has it)")
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    log = (workdir / "moto_server.log").open("w")
    proc = subprocess.Popen([exe, "-H", "127.0.0.1", "-p", str(port)], cwd=workdir, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)
    env = {**CREDENTIALS, "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}"}
    try:
        deadline = time.time() + 60
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2)
                break
            except OSError:
                if proc.poll() is not None or time.time() > deadline:
                    said = (workdir / "moto_server.log").read_text()
                    raise RuntimeError(f"moto_server did not start: {said}") from None
                time.sleep(0.3)
        client(env).create_bucket(Bucket=bucket)
        yield env
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
        log.close()
