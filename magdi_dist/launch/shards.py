"""A run config's data as Parquet shards: resolve the preprocessing of a ``MAGDiConfig``, bring its
shards up to date (``ensure_shards``, what ``train`` calls first) and hand the rows to the training loop
as ``TrainData`` (``train_data_from_shards``).

It sits above both ``preprocess`` and ``train`` because it speaks both languages: the pipeline's
settings, and the loop's tokenizer location and held-out split.
"""

from __future__ import annotations

from pathlib import Path

from magdi_dist.config import MAGDiConfig
from magdi_dist.preprocess.featurize import FeatureSpec, feature_spec_from_config
from magdi_dist.preprocess.manifest import manifest_path
from magdi_dist.preprocess.pipeline import Log, print_log, run_preprocess
from magdi_dist.preprocess.settings import PreprocessConfig, PreprocessSettings


def preprocess_section(cfg: MAGDiConfig) -> PreprocessConfig:
    # ``MAGDiConfig.preprocess`` when the config carries the section; defaults otherwise.
    return getattr(cfg, "preprocess", None) or PreprocessConfig()


def tokenizer_dir(cfg: MAGDiConfig) -> str:
    """Where the training loop takes its tokenizer from (``train.data.tokenizer_for``)."""
    if cfg.data.tokenizer != "train":
        return cfg.data.tokenizer
    return str(Path(cfg.train.output_dir) / "tokenizer")


def resolve(cfg: MAGDiConfig) -> tuple[PreprocessSettings, FeatureSpec]:
    section = preprocess_section(cfg)
    out_dir = section.out_dir or str(Path(cfg.train.output_dir) / "shards")
    inputs = section.inputs or list(cfg.data.paths) or [str(synthetic_input(cfg, out_dir))]
    settings = PreprocessSettings(
        **section.model_dump(exclude={"inputs", "out_dir"}),
        inputs=inputs,
        out_dir=out_dir,
        format=cfg.data.format,
        task=cfg.data.task,
    )
    return settings, feature_spec_from_config(cfg, tokenizer_dir(cfg))


def synthetic_input(cfg: MAGDiConfig, out_dir: str) -> Path:
    """The config's synthetic MAGs as a file (named by their generator settings; deterministic bytes),
    so they go through the same file -> shard pipeline as teacher data."""
    s = cfg.data.synthetic
    return Path(out_dir) / "inputs" / f"synthetic-n{s.n}-a{s.agents}-r{s.rounds}-s{s.seed}.jsonl"


def _write_synthetic(cfg: MAGDiConfig, path: Path) -> None:
    import os

    from magdi_dist.mag.readers import write_mags_jsonl
    from magdi_dist.mag.synth import synth_mags

    s = cfg.data.synthetic
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    write_mags_jsonl(synth_mags(s.n, agents=s.agents, rounds=s.rounds, seed=s.seed), tmp)
    os.replace(tmp, path)  # a half-written input would be hashed and keyed as if it were whole


def _ensure_tokenizer(cfg: MAGDiConfig, settings: PreprocessSettings, log: Log) -> None:
    """``data.tokenizer: train``: the tokenizer the loop will load from ``output_dir/tokenizer``, made
    by the loop's own ``train.data.tokenizer_for`` (trained on the training split, stamped with the
    config hash) before the shards are tokenized with it. Only when its stamp does not match is the
    input read; retraining on the same MAGs gives the same tokenizer, so shards stay valid."""
    from magdi_dist.config import config_hash
    from magdi_dist.mag.readers import read_mags
    from magdi_dist.preprocess.settings import expand_inputs
    from magdi_dist.train.data import split_mags, tokenizer_for
    from magdi_dist.train.dist import DistInfo

    stamp = Path(tokenizer_dir(cfg)) / "magdi_config_hash"  # tokenizer_for's stamp
    if stamp.is_file() and stamp.read_text() == config_hash(cfg):
        return
    mags = read_mags(expand_inputs(settings.inputs), format=settings.format, task=settings.task, strict=False).mags
    train_mags, _ = split_mags(mags, cfg.data.eval_fraction, cfg.data.split_seed)
    log(f"preprocess: training a {cfg.data.vocab_size}-token tokenizer on {len(train_mags)} MAGs -> {stamp.parent}")
    tokenizer_for(cfg, train_mags, DistInfo(rank=0, world_size=1, local_rank=0, local_world_size=1,
                                            accelerator="cpu"))


def ensure_shards(
    cfg: MAGDiConfig, *, engine: str = "ray", address: str | None = None, log: Log = print_log
) -> Path:
    """The manifest of ``cfg``'s shards, preprocessing first whatever is missing or stale.

    Cheap when everything is up to date (inputs are hashed, nothing is parsed, Ray is not started),
    so the training entry point calls it unconditionally. Call it from one process (the driver, or
    rank 0 before the others start): concurrent calls are safe (atomic writes) but duplicate work.
    """
    settings, spec = resolve(cfg)
    if not cfg.data.paths and not preprocess_section(cfg).inputs:
        path = Path(settings.inputs[0])
        if not path.is_file():
            _write_synthetic(cfg, path)
    if cfg.data.tokenizer == "train":
        _ensure_tokenizer(cfg, settings, log)
    run_preprocess(settings, spec, engine=engine, address=address, log=log)
    return manifest_path(settings.out_dir)


def train_data_from_shards(cfg: MAGDiConfig, manifest: str | Path):
    """``TrainData`` for ``train.loop.train(data=...)``: the shard rows, split into train and held-out
    rows by question with the loop's own rule (``split_mags``), over the questions that have rows, in
    manifest order. Changing the split never needs new shards."""
    from magdi_dist.preprocess.shards import ShardDataset
    from magdi_dist.train.data import TrainData, split_mags

    rows = ShardDataset(manifest)
    keys = rows.mag_keys()
    held = set(split_mags(list(dict.fromkeys(keys)), cfg.data.eval_fraction, cfg.data.split_seed)[1])
    train_idx = [i for i, k in enumerate(keys) if k not in held]
    eval_idx = [i for i, k in enumerate(keys) if k in held]
    train = rows.subset(train_idx)
    return TrainData(train, rows.subset(eval_idx), train_lengths=train.lengths)
