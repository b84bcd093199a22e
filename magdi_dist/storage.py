"""Storage roots that are object stores (``s3://bucket/prefix``, ``gs://...``) as well as local paths.

A run whose output folder is a URI works in a node-local **mirror** of it (``local_mirror``: under
``$MAGDI_SCRATCH``, default the node's temp dir) with the same code as a local run, and the mirror is
synced with the store at the points where something becomes durable (launch/stage.py): shards after
preparation, each checkpoint after it is complete (its ``COMPLETE`` marker last), the export and the
metrics at the end. A node that never saw the run (a replaced worker) pulls what it needs first.
Inputs that are objects (teacher files) are read from a node-local copy (``local_copy``).

Filesystems are pyarrow's (``pyarrow.fs.FileSystem.from_uri``), so the endpoint and credentials come
from the usual environment (``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``,
``AWS_DEFAULT_REGION``; Google's for ``gs://``), never from a config file. The one thing pyarrow
cannot do, an exclusive create (the run lock), goes through boto3's conditional put on S3.

This module imports nothing of the package: every layer may use it.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

SCRATCH_ENV = "MAGDI_SCRATCH"
# pyarrow reads an object ``chunk_size`` bytes per ranged GET (1 MiB by default): one request per MiB,
# which against moto_server moved checkpoints at 1.9-4.2 MB/s (benchmarks/results/object_storage_1mib_reads.json;
# object_storage.json is the same run with this). Writes are unaffected (multipart parts of their own).
READ_CHUNK = 64 << 20


def is_uri(path: str | os.PathLike[str] | None) -> bool:
    """``scheme://...`` other than ``file://``: a path pyarrow resolves to a remote filesystem."""
    text = str(path or "")
    return "://" in text and not text.startswith("file://")


def join(root: str | os.PathLike[str], *parts: str) -> str:
    """``root/part/...`` for a URI or a local path alike (no ``Path``: it would fold ``s3://`` to ``s3:/``)."""
    if not is_uri(root):
        return str(Path(root, *parts))
    return "/".join([str(root).rstrip("/"), *(p.strip("/") for p in parts)])


def filesystem(uri: str):
    """(pyarrow filesystem, path inside it) of a URI or local path."""
    import pyarrow.fs as pafs

    if not is_uri(uri):
        return pafs.LocalFileSystem(), str(Path(uri).resolve())
    return pafs.FileSystem.from_uri(uri)


def scratch_root() -> Path:
    """This node's scratch folder (``$MAGDI_SCRATCH``, else the temp dir): never shared by nodes."""
    return Path(os.environ.get(SCRATCH_ENV) or Path(tempfile.gettempdir()) / "magdi-scratch").expanduser()


def local_mirror(uri: str) -> Path:
    """This node's working copy of the storage folder ``uri`` (named by the URI, so every process of
    a node finds the same one)."""
    digest = hashlib.sha256(uri.rstrip("/").encode()).hexdigest()[:16]
    return scratch_root() / "mirror" / f"{uri.rstrip('/').rsplit('/', 1)[-1]}-{digest}"


def _listing(uri: str) -> dict[str, int]:
    """Relative path -> size of every file under ``uri`` ({} when there is nothing)."""
    import pyarrow.fs as pafs

    fs, root = filesystem(uri)
    if fs.get_file_info(root).type == pafs.FileType.NotFound:
        return {}
    infos = fs.get_file_info(pafs.FileSelector(root, recursive=True, allow_not_found=True))
    return {i.path[len(root):].lstrip("/"): i.size for i in infos if i.type == pafs.FileType.File}


def list_files(uri: str) -> dict[str, int]:
    return _listing(uri)


def exists(uri: str) -> bool:
    import pyarrow.fs as pafs

    fs, path = filesystem(uri)
    return fs.get_file_info(path).type != pafs.FileType.NotFound


def is_file(uri: str) -> bool:
    """A file (an object) is there: a prefix holding other objects is not one."""
    import pyarrow.fs as pafs

    fs, path = filesystem(uri)
    return fs.get_file_info(path).type == pafs.FileType.File


INPUT_CACHE = "inputs"


def cached_copy_path(uri: str) -> Path:
    """Where this node keeps its copy of the object ``uri``: the URI spelled as a path under
    ``$MAGDI_SCRATCH/inputs/`` (``s3://b/k.json`` -> ``inputs/s3/b/k.json``), so ``source_of`` can read
    the URI back from the path and two URIs never share a copy."""
    scheme, _, rest = uri.partition("://")
    return scratch_root() / INPUT_CACHE / scheme / rest.strip("/")


def source_of(path: str | os.PathLike[str]) -> str:
    """The URI a ``local_copy`` was made from; any other path as it is."""
    try:
        scheme, *rest = Path(path).relative_to(scratch_root() / INPUT_CACHE).parts
    except ValueError:
        return str(path)
    return f"{scheme}://{'/'.join(rest)}" if rest else str(path)


def local_copy(uri: str) -> Path:
    """The object ``uri`` as a file on this node (a local path is returned as it is), for readers that
    need a file: downloaded once into ``cached_copy_path``, again when the object's size or modification
    time changes (the copy carries the object's mtime). FileNotFoundError names ``uri`` when there is no
    such object."""
    import pyarrow.fs as pafs

    if not is_uri(uri):
        return Path(uri)
    fs, path = filesystem(uri)
    info = fs.get_file_info(path)
    if info.type != pafs.FileType.File:
        raise FileNotFoundError(f"no such object: {uri}")
    target = cached_copy_path(uri)
    mtime = info.mtime_ns
    have = target.stat() if target.is_file() else None
    if have is not None and have.st_size == info.size and (mtime is None or have.st_mtime_ns == mtime):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.part-{os.getpid()}")
    pafs.copy_files(path, str(tmp), source_filesystem=fs, destination_filesystem=pafs.LocalFileSystem(),
                    chunk_size=READ_CHUNK)
    if mtime is not None:
        os.utime(tmp, ns=(mtime, mtime))
    os.replace(tmp, target)  # whole or not at all: a reader never sees half an object
    return target


def read_bytes(uri: str) -> bytes:
    fs, path = filesystem(uri)
    with fs.open_input_stream(path) as f:
        return f.read()


def write_bytes(uri: str, data: bytes) -> None:
    """Whole or not at all: an object store's put is atomic; a local file is renamed into place."""
    if not is_uri(uri):
        path = Path(uri)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        tmp.write_bytes(data)
        os.replace(tmp, path)
        return
    fs, path = filesystem(uri)
    with fs.open_output_stream(path) as f:
        f.write(data)


def put_file(local: Path, uri: str) -> None:
    import pyarrow.fs as pafs

    fs, path = filesystem(uri)
    pafs.copy_files(str(local), path, source_filesystem=pafs.LocalFileSystem(), destination_filesystem=fs)


def push_tree(local: Path, uri: str, *, skip: tuple[str, ...] = (), last: tuple[str, ...] = (),
              small: int = 0) -> list[str]:
    """Upload the files under ``local`` that the store lacks or holds at another size, and every file
    under ``small`` bytes (files that change in place at the same size: manifests, markers); files
    named in ``last`` (a completion marker) go after all others. Returns the relative paths sent."""
    have = _listing(uri)
    files = sorted(p for p in local.rglob("*") if p.is_file() and not p.name.startswith(".")
                   and not any(p.relative_to(local).as_posix().startswith(s) for s in skip))
    files.sort(key=lambda p: p.name in last)  # stable: markers after everything else
    sent = []
    for file in files:
        rel = file.relative_to(local).as_posix()
        size = file.stat().st_size
        if have.get(rel) != size or size < small or file.name in last:
            put_file(file, join(uri, rel))
            sent.append(rel)
    return sent


def pull_tree(uri: str, local: Path, *, only: tuple[str, ...] | None = None, small: int = 0) -> list[str]:
    """Download the files under ``uri`` that ``local`` lacks or holds at another size, and every file
    under ``small`` bytes (``only``: relative-path prefixes to take). Each file is written whole, then
    renamed into place."""
    import pyarrow.fs as pafs

    fs, root = filesystem(uri)
    got = []
    for rel, size in sorted(_listing(uri).items()):
        if only is not None and not any(rel.startswith(o) for o in only):
            continue
        target = local / rel
        if target.is_file() and target.stat().st_size == size and size >= small:
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.part-{os.getpid()}")
        pafs.copy_files(f"{root}/{rel}", str(tmp), source_filesystem=fs,
                        destination_filesystem=pafs.LocalFileSystem(), chunk_size=READ_CHUNK)
        os.replace(tmp, target)
        got.append(rel)
    return got


def delete_tree(uri: str) -> None:
    fs, path = filesystem(uri)
    if exists(uri):
        fs.delete_dir(path)


def delete_file(uri: str) -> None:
    fs, path = filesystem(uri)
    if exists(uri):
        fs.delete_file(path)


def create_exclusive(uri: str, data: bytes) -> bool:
    """Create ``uri`` holding ``data`` unless it exists (False then), atomically: the run lock.
    Local: ``O_CREAT | O_EXCL``. S3: a conditional put (``If-None-Match: *``), which pyarrow does not
    expose; other stores are refused rather than locked unsafely."""
    if not is_uri(uri):
        path = Path(uri)
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        return True
    if not uri.startswith("s3://"):
        raise ValueError(f"{uri}: no exclusive create for this store (only local paths and s3://)")
    try:
        import boto3
        from botocore.exceptions import ClientError
    except ImportError:
        raise ValueError(f"{uri}: locking a run in S3 needs boto3: pip install 'magdi-dist[s3]'") from None
    bucket, _, key = uri[len("s3://"):].partition("/")
    try:
        boto3.client("s3").put_object(Bucket=bucket, Key=key, Body=data, IfNoneMatch="*")
    except ClientError as err:
        if err.response.get("Error", {}).get("Code") in ("PreconditionFailed", "ConditionalRequestConflict"):
            return False
        raise
    return True
