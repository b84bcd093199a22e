"""The pipeline's inputs: which files, and which settings shape their shards' bytes.

``content`` fields go into the fingerprint (change one and every shard is rebuilt); run fields (how
many actors, how many rows per actor call, where Ray runs) never do, so scaling the job up or down
reuses the shards already written.
"""

from __future__ import annotations

import glob
from pathlib import Path
from typing import Any

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
    """Files named by ``patterns`` (paths or globs), sorted and de-duplicated.

    Sorting makes the manifest's input order, and so its bytes, independent of the order the user
    typed the patterns in or the filesystem listed a directory.
    """
    found: set[Path] = set()
    for pattern in patterns:
        if glob.has_magic(pattern):
            matches = [Path(p) for p in glob.glob(pattern, recursive=True) if Path(p).is_file()]
            if not matches:
                raise FileNotFoundError(f"no input file matches {pattern!r}")
            found.update(matches)
        else:
            path = Path(pattern)
            if not path.is_file():
                raise FileNotFoundError(f"no such input file: {pattern}")
            found.add(path)
    return sorted(found, key=lambda p: str(p))
