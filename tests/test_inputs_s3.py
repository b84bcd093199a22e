"""Teacher files (``data.paths``) that are objects in a bucket (a real S3 server, moto): the same
shards, unit records and tokenizer, byte for byte, as the same files on a local disk, and a manifest
that differs only where it names them; a missing object is an error naming it, before anything is
written."""

from __future__ import annotations

from pathlib import Path

import pytest
from s3_server import s3_server

from magdi_dist.config import ConfigError, load_config
from magdi_dist.preprocess.prepare import prepare_data

FILES = ("gsm_3_2_100.json", "gsm_3_3_top100.json")  # two real teacher files (Du et al. debates)
CONFIG = ["model.base=tiny-1m", "data.features=zero", "data.max_len=96", "data.vocab_size=300"]


def _tree(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def bucket(tmp_path_factory, shared_data):
    """One server for the module, holding the teacher files; its endpoint and a scratch dir in the env."""
    root = tmp_path_factory.mktemp("bucket")
    with s3_server(root / "s3") as env, pytest.MonkeyPatch.context() as mp:
        for key, value in {**env, "MAGDI_SCRATCH": str(root / "scratch")}.items():
            mp.setenv(key, value)
        import boto3

        s3 = boto3.client("s3")
        for name in FILES:
            s3.upload_file(str(shared_data / "mag" / "debate_du" / name), "magdi", f"teacher/{name}")
        yield shared_data / "mag" / "debate_du", root / "scratch"


def test_teacher_objects_preprocess_to_the_bytes_of_their_local_files(tmp_path, bucket):
    folder, scratch = bucket
    local = [str(folder / n) for n in FILES]
    uris = [f"s3://magdi/teacher/{n}" for n in FILES]
    runs = {}
    for kind, paths in (("local", local), ("s3", uris)):
        cfg = load_config(None, [*CONFIG, f"data.paths=[{', '.join(reversed(paths))}]",
                                 f"train.output_dir={tmp_path / kind}"])
        report = prepare_data(cfg)
        assert report.totals["inputs"] == 2 and report.totals["mags"] > 100
        runs[kind] = _tree(tmp_path / kind / "shards")
    manifest = runs["local"].pop("manifest.json").decode()
    named = runs["s3"].pop("manifest.json").decode()
    assert runs["s3"] == runs["local"]  # shards, unit records, rejects, tokenizer: the same bytes
    for path, uri in zip(local, uris, strict=True):
        assert path in manifest and path not in named
        manifest = manifest.replace(path, uri)
    assert named == manifest  # the same manifest, naming the objects where it named the files
    # The objects were read from this node's scratch copies, not from anywhere near the local files.
    assert sorted(p.name for p in scratch.rglob("*.json")) == sorted(FILES)


def test_a_missing_teacher_object_is_named_before_anything_is_written(tmp_path, bucket):
    missing = "s3://magdi/teacher/gsm_missing.json"
    cfg = load_config(None, [*CONFIG, f"data.paths=[s3://magdi/teacher/{FILES[0]}, {missing}]",
                             f"train.output_dir={tmp_path / 'run'}"])
    with pytest.raises(ConfigError, match=f"data.paths: data file not found: {missing}$"):
        prepare_data(cfg)
    assert not (tmp_path / "run").exists()
    glob = load_config(None, [*CONFIG, "preprocess.inputs=[s3://magdi/teacher/*.jsonl]",
                              f"train.output_dir={tmp_path / 'glob'}"])
    with pytest.raises(FileNotFoundError, match=r"no input file matches 's3://magdi/teacher/\*.jsonl'"):
        prepare_data(glob)
