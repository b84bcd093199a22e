"""Test job (run by tests/test_export_sharded.py under torchrun): ``magdi_dist.launch.rank`` training,
whose export is also written the way it was before streaming, as the reference: DeepSpeed's
consolidated 16-bit state dict (``engine.save_16bit_model``, ZeRO-3 partitions gathered to rank 0),
loaded into a freshly built student, LoRA merged with peft's ``merge_and_unload`` and saved with
``save_pretrained``, into OUTPUT_DIR/export_ref.

    torchrun --nproc_per_node 2 tests/jobs/export_reference.py --config C [key=value ...]
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))


def reference_export(engine, cfg, tokenizer, out_dir: Path, rank: int) -> None:
    import torch

    from magdi_dist.model import MAGDiStudent
    from magdi_dist.train.dist import barrier

    tmp = out_dir / ".consolidated"
    if not engine.save_16bit_model(str(tmp), "state.bin"):
        raise RuntimeError("DeepSpeed did not consolidate the weights")
    barrier()
    if rank == 0:
        state = torch.load(tmp / "state.bin", map_location="cpu", weights_only=True)
        first = next(v for k, v in state.items() if k.startswith("encoder.convs.0.") and v.ndim == 2)
        student = MAGDiStudent(cfg.model, tokenizer=tokenizer, feature_dim=int(first.shape[1]))
        missing, unexpected = student.load_state_dict(state, strict=False)
        assert not unexpected and all(k.endswith("lm_head.weight") for k in missing), (missing, unexpected)
        lm = student.lm.merge_and_unload() if cfg.model.lora is not None else student.lm
        lm.config.use_cache = True
        lm.save_pretrained(str(out_dir), safe_serialization=True)
        shutil.rmtree(tmp)
    barrier()


def main(argv: list[str]) -> int:
    from magdi_dist.launch import rank as rank_entry
    from magdi_dist.train import export as export_module

    streamed = export_module.export

    def both(engine, cfg, tokenizer, out_dir, rank, **kwargs):
        result = streamed(engine, cfg, tokenizer, out_dir, rank, **kwargs)
        reference_export(engine, cfg, tokenizer, out_dir.parent / "export_ref", rank)
        return result

    export_module.export = both
    return rank_entry.main(argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
