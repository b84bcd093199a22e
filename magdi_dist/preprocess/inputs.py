"""The pipeline's inputs: which files, and which settings shape their shards' bytes.

``content`` fields go into the fingerprint (change one and every shard is rebuilt); run fields (how
many actors, how many rows per actor call, where Ray runs) never do, so scaling the job up or down
reuses the shards already written.

An input may be an object-store URI (``s3://bucket/teacher/gsm.json``, or a glob of them): it is read
from this node's copy (``storage.local_copy``, under ``$MAGDI_SCRATCH``), while the manifest names it
by its URI (``source_of``). Rows name their file by its base name only (preprocess/stages.py), so the
shards of an object are the bytes its local twin gives.
"""

from __future__ import annotations

import fnmatch
import glob
from pathlib import Path
from typing import Any

from magdi_dist import storage

# Bump when the row-building logic changes in a way the other fingerprints cannot see.
# 2: rows carry question_key, unit records their question keys.
# 3: unit records map each question key to its contamination key (the manifest's training_questions).
PIPELINE_VERSION = 3


# What shapes a shard's bytes, besides the tokenizer and model (``config.PreprocessConfig``'s content
# fields and the reader options); the other ``preprocess`` keys only shape the run.
CONTENT_FIELDS = ("format", "task", "clean_patterns", "records_per_shard", "feature_batch_size", "torch_threads",
                  "row_group_rows")


def content_fields(settings: dict[str, Any]) -> dict[str, Any]:
    return {k: settings[k] for k in CONTENT_FIELDS}


def expand_inputs(patterns: list[str]) -> list[Path]:
    """Files named by ``patterns`` (paths or globs, local or URIs), sorted and de-duplicated; a URI's
    file is this node's copy of it.

    Sorting (by the name as given: ``source_of``) makes the manifest's input order, and so its bytes,
    independent of the order the user typed the patterns in or the filesystem listed a directory.
    """
    found: set[Path] = set()
    for pattern in patterns:
        if storage.is_uri(pattern):
            found.update(storage.local_copy(uri) for uri in _expand_uri(pattern))
        elif glob.has_magic(pattern):
            matches = [Path(p) for p in glob.glob(pattern, recursive=True) if Path(p).is_file()]
            if not matches:
                raise FileNotFoundError(f"no input file matches {pattern!r}")
            found.update(matches)
        else:
            path = Path(pattern)
            if not path.is_file():
                raise FileNotFoundError(f"no such input file: {pattern}")
            found.add(path)
    return sorted(found, key=source_of)


def _expand_uri(pattern: str) -> list[str]:
    """The objects a URI names: itself, or those a glob matches (``*`` within one path segment, ``**``
    across segments, as ``glob`` has it locally)."""
    if not glob.has_magic(pattern):
        if not storage.is_file(pattern):
            raise FileNotFoundError(f"no such input file: {pattern}")
        return [pattern]
    scheme, _, rest = pattern.partition("://")
    fixed = []
    for part in rest.split("/"):
        if glob.has_magic(part):
            break
        fixed.append(part)
    base = f"{scheme}://{'/'.join(fixed)}"
    wanted = rest.split("/")[len(fixed):]
    matches = [storage.join(base, rel) for rel in storage.list_files(base) if _matches(rel.split("/"), wanted)]
    if not matches:
        raise FileNotFoundError(f"no input file matches {pattern!r}")
    return matches


def _matches(parts: list[str], wanted: list[str]) -> bool:
    if not wanted:
        return not parts
    if wanted[0] == "**":
        return any(_matches(parts[i:], wanted[1:]) for i in range(len(parts) + 1))
    return bool(parts) and fnmatch.fnmatchcase(parts[0], wanted[0]) and _matches(parts[1:], wanted[1:])


def source_of(path: str | Path) -> str:
    """An input as the manifest names it: the URI of a copied object, any other path as it is."""
    return storage.source_of(path)


def input_file(path: str | Path) -> Path:
    """An input (a path, or a URI the manifest names) as a file this process can read: on any node
    (a Ray Data task's), the object is copied there first."""
    return storage.local_copy(str(path)) if storage.is_uri(str(path)) else Path(path)


def missing_inputs(paths: list[str]) -> list[str]:
    """The teacher files of ``paths`` that are not there (objects included). A store that refuses to
    say (credentials, an endpoint that does not answer) is a ConfigError naming the object."""
    from magdi_dist.config import ConfigError

    missing = []
    for path in paths:
        try:
            there = storage.is_file(path) if storage.is_uri(path) else Path(path).is_file()
        except OSError as err:  # pyarrow's S3 errors name the bucket and key, and what the store said
            raise ConfigError(f"data.paths: cannot read {path}: {err}") from None
        if not there:
            missing.append(path)
    return missing
