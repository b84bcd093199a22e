"""The study tests' setup (tests/test_study.py, tests/test_study_seeds.py): the quick demo's configs
written under a test's folder, then changed. Not a test module."""

from __future__ import annotations

from pathlib import Path

import yaml

from magdi_dist.study.demo import write_demo_study

# The variant that trains on next-token prediction alone: MAGDi's comparison arm.
NTP_ONLY = {"name": "ntp-only", "overrides": {"model.margin_weight": 0.0, "model.node_weight": 0.0}}


def study_file(tmp_path: Path, train: dict[str, object] | None = None, **changes) -> Path:
    """The quick demo study under ``tmp_path / "study"``: ``changes`` replace its top-level keys, and
    ``train`` (dotted keys, e.g. ``{"train.max_steps": 3}``) sets values of its training config."""
    path = write_demo_study(tmp_path / "study", quick=True)
    tree = yaml.safe_load(path.read_text())
    tree.update(changes)
    path.write_text(yaml.safe_dump(tree))
    if train:
        base = path.parent / tree["base_config"]
        config = yaml.safe_load(base.read_text())
        for dotted, value in train.items():
            *parents, key = dotted.split(".")
            node = config
            for part in parents:
                node = node.setdefault(part, {})
            node[key] = value
        base.write_text(yaml.safe_dump(config))
    return path
