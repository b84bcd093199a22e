"""Checkpoints: ``output_dir/checkpoints/step-000123/`` = DeepSpeed state + trainer_state.json + one RNG
file per rank + ``COMPLETE`` (written last, by rank 0, after a barrier).

A directory without COMPLETE is a save that died half-way and is never resumed from. The trainer state
holds the data position (micro-batches consumed), so the sampler replays the exact remaining order,
and every rank's python / numpy / torch RNG, so dropout continues the same stream: a resumed run
reproduces the uninterrupted one bit for bit (same world size). Assumes output_dir is shared by all
ranks: one node, a shared filesystem, or this node's mirror of a run in object storage (launch/stage.py
syncs it with the store).
"""

from __future__ import annotations

import json
import logging
import random
import shutil
from pathlib import Path

import numpy as np
import torch

from magdi_dist.train.dist import barrier

log = logging.getLogger(__name__)

MARKER = "COMPLETE"
STATE = "trainer_state.json"
FROZEN = "frozen_excluded"  # trainer-state key: the frozen parameters a save left out (frozen_parameters)


class CheckpointMismatch(RuntimeError):
    """The newest checkpoint was written by a different config or world size."""


def ckpt_root(output_dir: str | Path) -> Path:
    return Path(output_dir) / "checkpoints"


def step_tag(step: int) -> str:
    return f"step-{step:06d}"


def _step_of(path: Path) -> int | None:
    name = path.name
    if not name.startswith("step-"):
        return None
    try:
        return int(name[5:])
    except ValueError:
        return None


def complete_checkpoints(output_dir: str | Path) -> list[Path]:
    """Complete checkpoint dirs, oldest first."""
    root = ckpt_root(output_dir)
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and _step_of(p) is not None and (p / MARKER).exists()]
    return sorted(found, key=_step_of)


def latest_checkpoint(output_dir: str | Path) -> Path | None:
    done = complete_checkpoints(output_dir)
    return done[-1] if done else None


def read_state(ckpt: Path) -> dict:
    return json.loads((ckpt / STATE).read_text())


class CheckpointCorrupt(CheckpointMismatch):
    """Every complete checkpoint failed verification: nothing is left to resume from."""


def newest_intact(output_dir: str | Path, check: str = "hash", log=print) -> tuple[Path | None, list[Path]]:
    """(the newest complete checkpoint whose files verify, the newer complete ones that do not).

    ``check``: "hash", "size" or "off" (``train.verify_checkpoints``). A failing one is reported by
    file, loudly; CheckpointCorrupt when there are complete checkpoints and none verifies."""
    done = complete_checkpoints(output_dir)
    bad: list[Path] = []
    for ckpt in reversed(done):
        problems = [] if check == "off" else verify(ckpt, hashes=check == "hash")
        if not problems:
            return ckpt, bad
        log(f"WARNING: checkpoint {ckpt} is corrupt, not resuming from it: " + "; ".join(problems))
        bad.append(ckpt)
    if bad:
        raise CheckpointCorrupt(f"every complete checkpoint in {ckpt_root(output_dir)} failed verification "
                                f"({', '.join(p.name for p in bad)}); use --no-resume to start over (this "
                                "deletes them), or train.verify_checkpoints=off to take the newest as it is")
    return None, bad


def check_state(ckpt: Path, cfg_hash: str, world_size: int | None) -> dict:
    """The trainer state of the checkpoint a resume would use, after checking it fits this run."""
    state = read_state(ckpt)
    if state["config_hash"] != cfg_hash:
        raise CheckpointMismatch(
            f"{ckpt} was written by a run with config hash {state['config_hash']}, but this config "
            f"hashes to {cfg_hash}: a setting that changes training differs. Use a new train.output_dir, "
            "or --no-resume to start over (this deletes the old checkpoints)."
        )
    if world_size is not None and state["world_size"] != world_size:
        raise CheckpointMismatch(
            f"{ckpt} was written with world size {state['world_size']}, this run has {world_size}: "
            "ZeRO shards and the data order depend on it. Resume with the same number of ranks."
        )
    return state


def _rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class CheckpointSpaceError(RuntimeError):
    """The disk a checkpoint goes to is too full for it."""


GiB = 2**30


def _size(ckpt: Path) -> int:
    return sum(p.stat().st_size for p in ckpt.rglob("*") if p.is_file())


def _any_rank(flag: bool) -> bool:
    """True on every rank when it is True on one (every rank must stop at the same save, or the
    others would wait for it in the next collective)."""
    import torch.distributed as dist

    if not dist.is_initialized() or dist.get_world_size() == 1:
        return flag
    t = torch.tensor([int(flag)])
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def _disk_full(err: BaseException, root: Path) -> bool:
    """Whether a failed save ran out of space. torch's C++ writer says only "basic_ios::clear:
    iostream error", with no errno: then a disk with almost nothing left is the answer."""
    import errno

    if isinstance(err, OSError) and err.errno == errno.ENOSPC:
        return True
    return shutil.disk_usage(root).free < 1 << 20


def save(engine, output_dir: str | Path, step: int, state: dict, rank: int, keep_last_k: int) -> Path:
    """Save on all ranks (collective). ``state``: step, epoch, data_position, config_hash, world_size.

    Before writing, the free space on each rank's disk is checked against the size the last complete
    checkpoint took; a save that runs out of space anyway is removed and named as such
    (CheckpointSpaceError), never left for a resume to find."""
    root = ckpt_root(output_dir)
    tag = step_tag(step)
    path = root / tag
    root.mkdir(parents=True, exist_ok=True)
    done = complete_checkpoints(output_dir)
    need = _size(done[-1]) if done else 0
    free = shutil.disk_usage(root).free
    if _any_rank(need > free):
        raise CheckpointSpaceError(
            f"no space left on {root} for checkpoint {tag}: need ~{need / GiB:.3f} GiB (the size of "
            f"{done[-1].name}), have {free / GiB:.3f} GiB on this disk; free some space or lower "
            "train.keep_last_k, then resume (the last complete checkpoint is intact)")
    if rank == 0 and path.exists():
        shutil.rmtree(path)  # leftovers of a save that died before COMPLETE
    barrier()
    frozen = frozen_parameters(engine)
    try:
        # A frozen base (LoRA) is never trained: each build loads it again from the pretrained weights,
        # so storing it (4 bytes a parameter, as ZeRO's fp32 fragments or in the module state) would
        # make a checkpoint the size of the base model for nothing.
        engine.save_checkpoint(str(root), tag=tag, save_latest=False, exclude_frozen_parameters=bool(frozen))
        torch.save(_rng_state(), path / f"rng_state_rank{rank}.pt")
        if rank == 0:
            (path / STATE).write_text(json.dumps({**state, FROZEN: frozen}, indent=2))
    except (OSError, RuntimeError) as err:
        if not _disk_full(err, root):
            raise
        shutil.rmtree(path, ignore_errors=True)
        raise CheckpointSpaceError(
            f"no space left on {root} while writing checkpoint {tag} ({type(err).__name__}: {err}); "
            f"the partial checkpoint was removed; it needs ~{max(need, 1) / GiB:.3f} GiB"
            f"{'' if need else ' or more (no earlier checkpoint to size it by)'}, the disk has "
            f"{shutil.disk_usage(root).free / GiB:.3f} GiB free") from None
    barrier()  # every rank's DeepSpeed shards and RNG file are on disk
    if rank == 0:
        # The marker holds every file's size and hash: a resume proves the files are the ones written.
        # Rank 0 reads them back while they are in the page cache (the disk is shared, see above).
        record = {"step": step, "files": file_digests(path)}
        tmp = path / f".{MARKER}.tmp"
        tmp.write_text(json.dumps(record, indent=1))
        tmp.rename(path / MARKER)
        _prune(output_dir, keep_last_k)
    return path


def file_digests(ckpt: Path) -> dict[str, dict]:
    from magdi_dist.config import sha256_file

    return {p.relative_to(ckpt).as_posix(): {"size": p.stat().st_size, "sha256": sha256_file(p)}
            for p in sorted(ckpt.rglob("*")) if p.is_file() and not p.name.startswith(f".{MARKER}")
            and p.name != MARKER}


def verify(ckpt: Path, hashes: bool = True) -> list[str]:
    """What is wrong with a complete checkpoint's files against its marker: [] when nothing. Sizes
    always; contents too with ``hashes``. A marker of an older version (a step number only) lists no
    files: nothing to check."""
    try:
        record = json.loads((ckpt / MARKER).read_text())
    except ValueError:
        return []  # "N\n": written before markers held hashes
    problems = []
    for name, want in (record.get("files") or {}).items() if isinstance(record, dict) else []:
        file = ckpt / name
        if not file.is_file():
            problems.append(f"{file}: missing")
        elif file.stat().st_size != want["size"]:
            problems.append(f"{file}: {file.stat().st_size} bytes, {want['size']} were written")
        elif hashes:
            from magdi_dist.config import sha256_file

            if sha256_file(file) != want["sha256"]:
                problems.append(f"{file}: content differs from what was written (sha256)")
    return problems


def set_aside(ckpt: Path, problems: list[str]) -> Path:
    """A checkpoint that failed verification, renamed out of the way (kept for inspection, never
    resumed from), with the reasons next to it."""
    bad = ckpt.with_name(f"{ckpt.name}.corrupt")
    shutil.rmtree(bad, ignore_errors=True)
    ckpt.rename(bad)
    (bad / "CORRUPT.txt").write_text("\n".join(problems) + "\n")
    return bad


def _prune(output_dir: str | Path, keep_last_k: int) -> None:
    done = complete_checkpoints(output_dir)
    newest = _step_of(done[-1])
    for old in done[:-keep_last_k]:
        shutil.rmtree(old, ignore_errors=True)
    # Incomplete dirs older than the newest complete one can never become useful.
    for p in ckpt_root(output_dir).iterdir():
        step = _step_of(p)
        if p.is_dir() and step is not None and step < newest and not (p / MARKER).exists():
            shutil.rmtree(p, ignore_errors=True)


def frozen_parameters(engine) -> dict | None:
    """The frozen parameters a save leaves out (their count and a digest of their names), or None when
    every parameter trains."""
    import hashlib

    names = sorted(n for n, p in engine.module.named_parameters() if not p.requires_grad)
    if not names:
        return None
    return {"count": len(names), "names_sha256": hashlib.sha256("\n".join(names).encode()).hexdigest()}


def restore(engine, ckpt: Path, rank: int) -> dict:
    """Load DeepSpeed state (weights, optimizer, LR schedule) and this rank's RNG; return trainer state.

    A checkpoint saved without its frozen parameters loads non-strictly, once the model is shown to
    freeze exactly the parameters the save left out: those are the only keys it lacks, and the model
    holds them already (built from the same base; the run's config hash was matched before this)."""
    saved, here = read_state(ckpt).get(FROZEN), frozen_parameters(engine)
    if saved is not None and saved != here:
        raise CheckpointMismatch(f"{ckpt}: saved without {saved['count']} frozen parameter(s) (names sha256 "
                                 f"{saved['names_sha256'][:12]}), but this model freezes {here}: it cannot "
                                 "supply the weights the save left out")
    load_path, _ = engine.load_checkpoint(
        str(ckpt.parent), tag=ckpt.name, load_optimizer_states=True, load_lr_scheduler_states=True,
        load_module_strict=saved is None,
    )
    if load_path is None:
        raise RuntimeError(f"DeepSpeed could not load the checkpoint {ckpt}")
    _set_rng_state(torch.load(ckpt / f"rng_state_rank{rank}.pt", weights_only=False))
    return read_state(ckpt)


def clear(output_dir: str | Path) -> None:
    """--no-resume: drop old checkpoints so keep_last_k and a later resume only see this run's. Run by
    the driver that resolves the run (launch/resolve.py), once, before any rank starts."""
    root = ckpt_root(output_dir)
    if root.exists():
        log.warning("--no-resume: deleting existing checkpoints in %s", root)
        shutil.rmtree(root)
