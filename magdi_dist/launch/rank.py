"""``python -m magdi_dist.launch.rank --config FILE [key=value ...]``: the per-rank entry point.

Rank 0 brings the shards up to date (``preprocess.prepare_data``, in-process) while the other ranks
wait at a barrier; then every rank reads them and trains. Under ``magdi-dist train`` the driver has
prepared already, so rank 0 only finds "nothing to do". Launchers that work on CPU (checked with
deepspeed 0.19.8, torch 2.13):

* ``torchrun --standalone --nproc_per_node 2 -m magdi_dist.launch.rank --config ...``
  (this is what ``magdi-dist train --nproc-per-node 2`` runs after validating and preparing);
* ``deepspeed --num_gpus 2 --module magdi_dist.launch.rank --config ...`` with DS_ACCELERATOR=cpu (or
  no GPU): on CPU ``--num_gpus`` means local ranks; the ``--local_rank=N`` it appends is accepted and
  ignored (LOCAL_RANK comes from the environment). It sets LOCAL_SIZE, not LOCAL_WORLD_SIZE; dist.py
  maps it. ``--bind_cores_to_rank`` wraps every rank in ``numactl``, which must be installed.
  ``--num_nodes N`` with a hostfile is untested here (one machine); checkpoints and shards then need
  an output_dir shared by all nodes;
* plain ``python -m magdi_dist.launch.rank`` (one rank, no env vars needed).

A large corpus is better prepared before the ranks start (``magdi-dist preprocess``): the others wait
for rank 0 inside a collective, under the process group's timeout.
"""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    from magdi_dist.config import load_config, or_exit, with_durable_outputs

    parser = argparse.ArgumentParser(prog="python -m magdi_dist.launch.rank")
    parser.add_argument("--config", required=True)
    parser.add_argument("--resume", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--storage", default=None, help="Root for relative output paths (or $MAGDI_STORAGE).")
    parser.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("overrides", nargs="*", help="key.sub=value")
    args = parser.parse_args(argv)
    cfg = or_exit(lambda: with_durable_outputs(load_config(args.config, args.overrides), args.storage))

    from magdi_dist.data.shards import load_train_data
    from magdi_dist.preprocess.prepare import prepare_data, shards_dir
    from magdi_dist.train.dist import barrier, init_distributed
    from magdi_dist.train.loop import train

    info = init_distributed()
    if info.is_main:
        prepare_data(cfg, engine="local")
    barrier()
    result = train(cfg, load_train_data(shards_dir(cfg)), resume=args.resume)
    if info.is_main:  # the line magdi-dist train prints for one rank
        print(f"trained to step {result.step}/{result.total_steps}; export {result.export_dir}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
