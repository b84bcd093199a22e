"""Test job (run by tests/test_zero3_build.py under torchrun): builds the student on this rank, plain or
partitioned with ZeRO-3's ``zero.Init``, and writes what construction cost.

    torchrun --nproc_per_node 2 tests/jobs/build_memory.py plain|zero3 OUT_DIR CONFIG [key=value ...]

Per rank, OUT_DIR/MODE_rank{r}.json: resident memory before construction and its peak during it
(``VmHWM`` after resetting it through /proc/self/clear_refs, so imports and the process group do not
count). Rank 0 also writes OUT_DIR/MODE_state.pt: every weight of the built student, gathered whole,
to compare the two builds.
"""

from __future__ import annotations

import gc
import json
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))


def _status_kib(field: str) -> int:
    return int(re.search(rf"{field}:\s+(\d+)", Path("/proc/self/status").read_text()).group(1))


class VocabOnly:
    """What a tiny build reads from a tokenizer: its length and special ids (none here)."""

    def __init__(self, n: int):
        self.n = n

    def __len__(self) -> int:
        return self.n

    bos_token_id = eos_token_id = pad_token_id = None


def main(argv: list[str]) -> int:
    import deepspeed  # noqa: F401  (imported before the measurement: its import is not construction)
    import torch
    import transformers  # noqa: F401

    from magdi_dist.config import load_config
    from magdi_dist.launch.resolve import model_shape
    from magdi_dist.model import MAGDiStudent
    from magdi_dist.train.dist import init_distributed
    from magdi_dist.train.engine import engine_config

    mode, out, config, overrides = argv[0], Path(argv[1]), argv[2], argv[3:]
    cfg = load_config(config, overrides)
    info = init_distributed()
    tok = VocabOnly(cfg.data.vocab_size)
    ds_config, _ = engine_config(cfg, info.world_size, info.accelerator, model_shape(cfg)[0].hidden_size)
    # zero.Init needs DeepSpeed's communication layer; set it up before the measured window.
    deepspeed.init_distributed(dist_backend="gloo")
    # A throw-away build of a small model first, the same way: the lazy imports (modeling_llama, peft)
    # and DeepSpeed's one-time set-up are then outside the window, which measures the model itself.
    small = cfg.model.model_copy(update={"base": {"hidden_size": 32, "num_hidden_layers": 1,
                                                  "num_attention_heads": 2, "intermediate_size": 64}})
    del_me = MAGDiStudent(small, tokenizer=VocabOnly(300), ds_config=ds_config if mode == "zero3" else None)
    del del_me
    gc.collect()
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
    before = _status_kib("VmRSS")
    student = MAGDiStudent(cfg.model, tokenizer=tok, feature_dim=None,
                           ds_config=ds_config if mode == "zero3" else None)
    peak = _status_kib("VmHWM")
    (out / f"{mode}_rank{info.rank}.json").write_text(json.dumps(
        {"rss_before_kib": before, "peak_kib": peak, "growth_kib": peak - before,
         "rss_after_kib": _status_kib("VmRSS"),
         "local_numel": sum(p.ds_tensor.numel() if hasattr(p, "ds_tensor") else p.numel()
                            for p in student.parameters()),
         "params": sum(getattr(p, "ds_numel", p.numel()) for p in student.parameters())}))
    params = list(student.parameters())
    with deepspeed.zero.GatheredParameters(params, modifier_rank=None, enabled=mode == "zero3"):
        if info.rank == 0:
            torch.save({k: v.detach().clone() for k, v in student.named_parameters()}, out / f"{mode}_state.pt")
    torch.distributed.barrier()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
