"""A real S3-compatible HTTP server for the object-storage tests: moto's standalone ``moto_server``
(``moto[server]`` in the dev extra) on 127.0.0.1, a free port, its own temp dir, stopped by pid.
Not a test module; test modules import from it."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def s3_server(workdir: Path, bucket: str = "magdi") -> Iterator[dict[str, str]]:
    """The environment a client needs (endpoint + credentials) for a fresh server with ``bucket``."""
    exe = shutil.which("moto_server", path=str(Path(sys.executable).parent)) or shutil.which("moto_server")
    if exe is None:
        raise RuntimeError("moto_server is missing: pip install 'moto[server]' (the dev extra has it)")
    workdir.mkdir(parents=True, exist_ok=True)
    port = _free_port()
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
        import boto3

        boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"], aws_access_key_id="testing",
                     aws_secret_access_key="testing", region_name="us-east-1").create_bucket(Bucket=bucket)
        yield env
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
        log.close()


def objects(env: dict[str, str], bucket: str, prefix: str = "") -> dict[str, bytes]:
    """Every object under ``prefix``, read straight through boto3 (not through the code under test)."""
    import boto3

    s3 = boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"], aws_access_key_id="testing",
                      aws_secret_access_key="testing", region_name="us-east-1")
    out = {}
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for obj in page.get("Contents", []):
            out[obj["Key"]] = s3.get_object(Bucket=bucket, Key=obj["Key"])["Body"].read()
    return out
