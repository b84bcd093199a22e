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


def test_magdi_vs_sft_study_is_the_demo_budget_at_five_sizes_and_three_seeds():
    import yaml
    from transformers import LlamaForCausalLM

    from magdi_dist.model.build import tiny_config
    from magdi_dist.study.demo import DEMO_SIZES, DEMO_TRAIN, STUDY_STEPS, at_steps

    study = load_study(CONFIGS / "study_magdi_vs_sft.yaml")
    assert [s.name for s in study.sizes] == ["0.25m", "0.5m", "1m", "2.5m", "5m"]
    assert [v.name for v in study.variants] == ["magdi", "ntp-only"] and study.compared == ("magdi", "ntp-only")
    assert study.seeds == [0, 1, 2] and len(study.cells()) == 30
    # At least 400 distinct held-out problems whose question is in no training discussion.
    from magdi_dist.mag.split import contamination_key
    from magdi_dist.mag.synth import synth_mags

    base_cfg = study.cell_config(study.cells()[0])
    syn = base_cfg.data.synthetic
    trained = {contamination_key(m.question) for m in synth_mags(syn.n, agents=syn.agents, rounds=syn.rounds,
                                                                  seed=syn.seed)}
    e = study.evaluation
    heldout = {contamination_key(m.question) for m in synth_mags(e.synthetic_n, seed=e.synthetic_seed)}
    assert e.data is None and len(heldout - trained) >= 400
    # Every cell is the demo's config at the study's step count; the demo's three sizes are its models
    # (their rates are the ones swept at 1,200 steps, docs/demo_lr_sweep.md; the demo's own are swept
    # at its shorter budget).
    assert yaml.safe_load(Path(study.base_config).read_text()) == at_steps(DEMO_TRAIN, STUDY_STEPS)
    demo = {name: base for name, base, _ in DEMO_SIZES}
    assert all(s.overrides["model.base"] == demo[s.name] for s in study.sizes if s.name in demo) and len(demo) == 3
    assert {s.name: s.overrides["train.lr"] for s in study.sizes if s.name in demo} == {"0.25m": 1e-2, "1m": 1e-3,
                                                                                       "5m": 1e-3}
    configs = [study.cell_config(c) for c in study.cells()]
    assert len({(c.data.model_dump_json(), c.preprocess.out_dir, c.model.feature_model) for c in configs}) == 1
    assert {c.train.seed for c in configs} == {0, 1, 2} and len({c.train.output_dir for c in configs}) == 30
    ntp = [c for c in configs if "ntp-only" in c.train.output_dir]
    assert len(ntp) == 15 and all(c.model.margin_weight == c.model.node_weight == 0.0 for c in ntp)
    # Five sizes from 0.25M to 5M LM parameters (the 512-token vocabulary), each about twice the last.
    lm = [sum(p.numel() for p in LlamaForCausalLM(tiny_config(s.overrides["model.base"], 512, {})).parameters())
          for s in study.sizes]
    assert 0.2e6 < lm[0] < 0.3e6 and 4.5e6 < lm[-1] < 5.5e6
    assert all(1.7 < b / a < 2.6 for a, b in zip(lm, lm[1:], strict=False)), lm


def test_gpu_ablation_config_is_the_papers_training_on_all_clean_questions(shared_data):
    from magdi_dist.eval.questions import load_questions

    mags = [shared_data / "mag" / "debate_du" / f for f in ("gsm_3_2_100.json", "gsm_3_3_top100.json",
                                                            "gsm_llama32_3b_agents3_rounds3.json",
                                                            "gsm_v4_stateful_3_4_top_100_majority_error.json")]
    mags.append(shared_data / "mag" / "magdi_layout" / "GSM8k_gpt4o_round_2.json")
    study = load_study(CONFIGS / "study_smollm2_ablation_gpu.yaml", [
        f"evaluation.data={shared_data / 'benchmarks' / 'gsm8k' / 'test.jsonl'}",
        f"evaluation.exclude={[str(m) for m in mags]}", f"evaluation.teachers={mags[-1]}"])
    cells = {c.variant.name: study.cell_config(c) for c in study.cells()}
    assert list(cells) == ["base", "sft", "magdi-frozen", "magdi-live"] and study.compared == ("magdi-frozen", "sft")
    for name, cfg in cells.items():
        t, m = cfg.train, cfg.model
        # dinobby/MAGDi train.py: 10 epochs, 4 x 4 = 16 per step, lr 5e-6, 100 warmup steps, linear decay.
        assert (t.epochs, t.micro_batch_size * t.grad_accum * study.num_workers, t.lr, t.warmup_steps,
                t.schedule) == (10, 16, 5e-6, 100, "linear")
        assert t.max_steps == (0 if name == "base" else None)
        assert t.precision == "bf16" and m.dtype == "bfloat16" and m.base == "smollm2-135m-instruct"
        assert (m.lora.r, m.lora.alpha, m.lora.target_modules) == (16, 32, ["q_proj", "v_proj"])
        assert (m.ntp_weight, m.margin) == (1.0, 1.0)
        weights = (0.0, 0.0) if name == "sft" else (1.0, 0.1)
        assert (m.node_weight, m.margin_weight) == weights
        assert m.graph_features == ("live" if name == "magdi-live" else "frozen")
    e = study.evaluation
    assert e.limit is None and e.k == 1 and e.temperature == 0.0
    questions, _ = load_questions(e.data, exclude=e.exclude)
    assert len(questions) == 1010  # GSM8K test (1,319) minus the 309 discussed questions
