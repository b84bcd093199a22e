"""Test job (tests/test_run_spec.py, under torchrun): ``magdi_dist.launch.rank`` with every function
that works a run out (the DeepSpeed config, the optimizer choice, ``lm_passes``, the model shape)
counted on this rank; the counts go to ``OUT_DIR/rank<N>.json``.

    OUT_DIR=DIR torchrun --nproc_per_node 2 tests/jobs/count_resolution.py --run-file RUN.json
"""

from __future__ import annotations

import collections
import json
import os
import sys
from pathlib import Path

# Every name is looked up in its module when called (the library imports them lazily, inside
# functions), so replacing the module attribute counts every call.
COUNTED = {
    "magdi_dist.train.engine": ("build_ds_config", "engine_config", "fill_auto", "resolve_optimizer_choice"),
    "magdi_dist.model.student": ("resolve_lm_passes",),
    "magdi_dist.model.shapes": ("config_shape", "student_shape"),
    "magdi_dist.launch.resolve": ("resolve_run", "model_shape"),
}


def main(argv: list[str]) -> int:
    import importlib

    calls: collections.Counter = collections.Counter()
    for module_name, names in COUNTED.items():
        module = importlib.import_module(module_name)
        for name in names:
            original = getattr(module, name)

            def counted(*args, _name=f"{module_name}.{name}", _original=original, **kwargs):
                calls[_name] += 1
                return _original(*args, **kwargs)

            setattr(module, name, counted)

    from magdi_dist.launch import rank as rank_entry

    code = rank_entry.main(argv)
    out = Path(os.environ["OUT_DIR"]) / f"rank{os.environ.get('RANK', '0')}.json"
    out.write_text(json.dumps(dict(calls)))
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
