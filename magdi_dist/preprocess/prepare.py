"""The one preparation function: a run config's data as Parquet shards, up to date.

Every launcher (``magdi-dist train``, torchrun / the deepspeed launcher through ``launch.rank``, Ray
Train, the study runner, the preprocess job) calls ``prepare_data`` once, on the driver, and the ranks
then read what it made with ``data.shards.load_train_data``. What it decides, it decides once and
writes down: the synthetic inputs as a file, the tokenizer (trained on the training questions only)
next to the shards, and the held-out split in the manifest.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from magdi_dist.config import ConfigError, MAGDiConfig, PreprocessConfig
from magdi_dist.model.sources import checkpoint_dir
from magdi_dist.preprocess.featurize import FeatureSpec, feature_spec_from_config
from magdi_dist.preprocess.fingerprint import sha256_file, sha256_json
from magdi_dist.preprocess.inputs import expand_inputs, missing_inputs
from magdi_dist.preprocess.pipeline import Log, PreprocessReport, print_log, run_preprocess

TOKENIZER_DIR = "tokenizer"
TOKENIZER_STAMP = "magdi_tokenizer_stamp"  # what the tokenizer was trained on; retrained when it differs


def shards_dir(cfg: MAGDiConfig) -> Path:
    return Path(cfg.preprocess.out_dir or Path(cfg.train.output_dir) / "shards")


def check_inputs(cfg: MAGDiConfig) -> None:
    """Every teacher file of ``data.paths`` exists here, or a ConfigError names the key and the files
    (before anything is written)."""
    missing = missing_inputs(cfg.data.paths)  # objects too (s3://...)
    if missing:
        raise ConfigError(f"data.paths: data file not found: {', '.join(missing)}")


def resolve(cfg: MAGDiConfig) -> tuple[PreprocessConfig, FeatureSpec]:
    """The ``preprocess`` section with its inputs and output folder filled in, and the feature spec."""
    out_dir = shards_dir(cfg)
    inputs = cfg.preprocess.inputs or list(cfg.data.paths) or [str(synthetic_input(cfg, out_dir))]
    if cfg.data.max_mags is not None:
        inputs = [str(subset_input(cfg, inputs, out_dir))]
    # A GGUF tokenizer is converted here, on the driver, once; workers load the converted directory.
    tokenizer = (str(out_dir / TOKENIZER_DIR) if cfg.data.tokenizer == "train"
                 else checkpoint_dir(cfg.data.tokenizer))
    pre = cfg.preprocess.model_copy(update={"inputs": inputs, "out_dir": str(out_dir)})
    return pre, feature_spec_from_config(cfg, tokenizer)


def synthetic_input(cfg: MAGDiConfig, out_dir: Path) -> Path:
    """The config's synthetic MAGs as a file (named by their generator settings; deterministic bytes),
    so they go through the same file -> shard pipeline as teacher data."""
    s = cfg.data.synthetic
    return out_dir / "inputs" / f"synthetic-n{s.n}-a{s.agents}-r{s.rounds}-s{s.seed}.jsonl"


def subset_input(cfg: MAGDiConfig, inputs: list[str], out_dir: Path) -> Path:
    """``data.max_mags``: the first N MAGs of ``inputs`` as one generic MAG JSONL file, named by what it
    was cut from (the inputs' bytes, reader options, N), written once. Records the reader rejects on
    the way go to ``<shards>/rejects/`` like any reject, so records read = MAGs kept + rejected."""
    from magdi_dist.mag.readers import iter_mags, write_mags_jsonl

    n, files = cfg.data.max_mags, expand_inputs(inputs)
    key = sha256_json({"inputs": [(f.name, sha256_file(f)) for f in files], "format": cfg.data.format,
                       "task": cfg.data.task, "max_mags": n})[:16]
    path = out_dir / "inputs" / f"first{n}-{key}.jsonl"
    if path.is_file():
        return path
    mags, rejects = [], []
    for f in files:
        for mag in iter_mags(f, format=cfg.data.format, task=cfg.data.task, strict=cfg.preprocess.strict,
                             on_reject=rejects.append):
            mags.append(mag)
            if len(mags) == n:
                break
        if len(mags) == n:
            break
    path.parent.mkdir(parents=True, exist_ok=True)
    if rejects:
        from magdi_dist.preprocess.manifest import REJECTS
        from magdi_dist.preprocess.shard_io import atomic_write_jsonl

        atomic_write_jsonl(out_dir / REJECTS / f"{path.stem}.rejects.jsonl", rejects)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    write_mags_jsonl(mags, tmp)
    os.replace(tmp, path)
    return path


def _write_synthetic(cfg: MAGDiConfig, path: Path) -> None:
    from magdi_dist.mag.readers import write_mags_jsonl
    from magdi_dist.mag.synth import synth_mags

    s = cfg.data.synthetic
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    write_mags_jsonl(synth_mags(s.n, agents=s.agents, rounds=s.rounds, seed=s.seed), tmp)
    os.replace(tmp, path)  # a half-written input would be hashed and keyed as if it were whole


def clean_patterns(cfg: MAGDiConfig) -> list[str]:
    """The chain-cleaning regexes ``cfg`` asks for ([] when ``data.clean_chains`` is off)."""
    from magdi_dist.mag.clean import DEFAULT_PATTERNS

    if not cfg.data.clean_chains:
        return []
    return list(cfg.data.chain_patterns if cfg.data.chain_patterns is not None else DEFAULT_PATTERNS)


def _split(cfg: MAGDiConfig) -> dict:
    return {"eval_fraction": cfg.data.eval_fraction, "seed": cfg.data.split_seed}


def ensure_tokenizer(cfg: MAGDiConfig, pre: PreprocessConfig, log: Log) -> Path:
    """``data.tokenizer: train``: a byte-level BPE trained on the training questions' MAGs only, in
    ``<shards>/tokenizer``. Its stamp hashes what it was trained on (input bytes, reader options, split,
    vocabulary); a matching stamp means nothing is read. Training is deterministic, so a retrained
    tokenizer equals the old one and the shards stay valid.

    This reads the inputs on the driver, before the pipeline reads them again to build rows: the
    tokenizer must exist before any row is tokenized, and only tiny from-scratch students train one.
    """
    from magdi_dist.data.tokenizer import mag_texts, train_tokenizer
    from magdi_dist.mag.readers import read_mags
    from magdi_dist.mag.split import is_heldout, question_key

    out = Path(pre.out_dir) / TOKENIZER_DIR
    files = expand_inputs(pre.inputs)
    patterns = clean_patterns(cfg)
    stamp = sha256_json({"inputs": [[p.name, sha256_file(p)] for p in files], "format": cfg.data.format,
                         "task": cfg.data.task, "split": _split(cfg), "vocab_size": cfg.data.vocab_size,
                         "clean_patterns": patterns})
    if (out / TOKENIZER_STAMP).is_file() and (out / TOKENIZER_STAMP).read_text() == stamp:
        return out
    mags = read_mags(files, format=cfg.data.format, task=cfg.data.task, strict=False).mags
    if patterns:  # the text the rows will hold
        from magdi_dist.mag.clean import clean_mag

        mags = [clean_mag(m, tuple(patterns))[0] for m in mags]
    s = _split(cfg)
    train = [m for m in mags if not is_heldout(question_key(m.question), s["eval_fraction"], s["seed"])]
    if not train:
        raise ValueError(f"no training questions in {pre.inputs} to train a tokenizer on")
    log(f"preprocess: training a {cfg.data.vocab_size}-token tokenizer on {len(train)} of {len(mags)} MAGs "
        f"(held-out questions excluded) -> {out}")
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    train_tokenizer(mag_texts(train), tmp, vocab_size=cfg.data.vocab_size)
    (tmp / TOKENIZER_STAMP).write_text(stamp)
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)  # the loop and the actors only ever see a whole, stamped tokenizer
    return out


def prepare_data(cfg: MAGDiConfig, *, engine: str = "local", address: str | None = None,
                 store: str | None = None, log: Log = print_log) -> PreprocessReport:
    """``cfg``'s shards brought up to date; the report's ``manifest`` is what the ranks read.

    Cheap when everything is up to date (inputs are hashed, nothing is parsed, Ray is not started), so
    every launcher calls it unconditionally. ``engine``: "local" (this process) or "ray" (Ray Data on
    the cluster at ``address`` / ``RAY_ADDRESS``, else an embedded one); both write the same bytes.
    Call it from one process: concurrent calls are safe (atomic writes) but duplicate work. ``store``:
    the object-storage folder the shards folder mirrors (``pipeline.run_preprocess``).
    """
    check_inputs(cfg)
    pre, spec = resolve(cfg)
    if not cfg.data.paths and not cfg.preprocess.inputs:
        path = Path(pre.inputs[0])
        if not path.is_file():
            _write_synthetic(cfg, path)
    if cfg.data.tokenizer == "train":
        ensure_tokenizer(cfg, pre, log)
    return run_preprocess(pre, spec, format=cfg.data.format, task=cfg.data.task, clean_patterns=clean_patterns(cfg),
                          split=_split(cfg), engine=engine, address=address, store=store, log=log)
