"""Every shipped config validates (litgpt's rule): the CPU ones as they are, the GPU ones with their
cluster-only data paths pointed at the shared test data (the hub student itself is not loaded)."""

from pathlib import Path

import pytest

from magdi_dist.config import ConfigError, load_config
from magdi_dist.study.config import load_study

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def test_tiny_config_validates():
    cfg = load_config(CONFIGS / "tiny.yaml")
    assert cfg.model.base.startswith("tiny-") and not cfg.data.paths


def test_gpu_config_validates_with_local_data(shared_data):
    files = [str(p) for p in sorted((shared_data / "mag" / "magdi_layout").glob("*.json"))[:3]]
    cfg = load_config(CONFIGS / "gpu_mistral7b.yaml", [f"data.paths={files}"])
    assert cfg.model.base == "mistralai/Mistral-7B-Instruct-v0.2"
    assert cfg.model.lora is not None and cfg.model.lora.r == 16
    assert cfg.train.deepspeed == "zero3" and cfg.train.precision == "bf16"
    assert cfg.model.trust_remote_code is False


def test_gpu_config_loads_here_and_names_missing_cluster_data_when_prepared():
    """Its teacher files live on the cluster: the config loads (a plan needs no data), and preparing
    the data here names the key and the files."""
    from magdi_dist.preprocess.prepare import check_inputs

    cfg = load_config(CONFIGS / "gpu_mistral7b.yaml")
    with pytest.raises(ConfigError, match="data.paths: data file not found: /data/magdi/SQA_gpt4o_round_2.json"):
        check_inputs(cfg)


def test_study_configs_validate(shared_data):
    tiny = load_study(CONFIGS / "study_tiny.yaml")
    assert [c[0] for c in tiny.cells()] == ["1m-magdi", "1m-ntp-only", "5m-magdi", "5m-ntp-only"]
    files = [str(p) for p in sorted((shared_data / "mag" / "magdi_layout").glob("*.json"))[:3]]
    gpu = load_study(CONFIGS / "study_gpu.yaml", [f"overrides={{data.paths: {files}}}"])
    assert len(gpu.cells()) == 6 and gpu.tracking_uri.startswith("http")


def test_debate_config_validates():
    from magdi_dist.debate.config import load_debate_config

    cfg = load_debate_config(CONFIGS / "debate_gsm8k.yaml")
    assert [a.name for a in cfg.agents] == ["agent0", "agent1", "agent2"] and cfg.rounds == 2
    assert cfg.protocol.kind == "du" and Path(cfg.out).is_absolute()
