"""``python -m magdi_dist.launch.rank --run-file RUN.json`` (or ``--config FILE [key=value ...]``): the
per-rank entry point.

``--run-file``: the resolved run a driver wrote (``<output_dir>/run.json``, launch/resolve.py); every rank
reads it and trains. This is what ``magdi-dist train --nproc-per-node N`` starts under torchrun after
it has resolved the run and prepared the shards.

``--config``: no driver ran. Rank 0 is the driver: it resolves the run (checks, resume decision),
brings the shards up to date (``preprocess.prepare_data``, in-process) and writes run.json while the
other ranks wait at a barrier; then every rank reads that file. Launchers that work on CPU (checked
with deepspeed 0.19.8, torch 2.13):

* ``torchrun --standalone --nproc_per_node 2 -m magdi_dist.launch.rank --config ...``;
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
import contextlib
import sys

from magdi_dist.run_spec import RunSpec
from magdi_dist.storage import is_uri, join


def run_rank(spec: RunSpec, *, metrics_callback=None, on_checkpoint=None):
    """Train this rank on the published run ``spec`` (``train.loop.train``'s TrainResult): what every
    launcher's ranks run. A stored run (launch/stage.py) is first pulled into this node's mirror, its
    checkpoints are pushed as they complete, and rank 0 pushes the results."""
    from magdi_dist.data.shards import load_train_data
    from magdi_dist.launch.stage import checkpoint_pusher, pull, push_results, remote, spec_on_node
    from magdi_dist.train.dist import barrier, init_distributed
    from magdi_dist.train.loop import train

    info = init_distributed()
    node = spec_on_node(spec)
    stored = remote(spec.config)
    if stored:
        pull(spec.config, rank=info.rank)  # the newest complete checkpoint, this rank's shards; one rank at a time
        push, then = checkpoint_pusher(spec.config.train.output_dir), on_checkpoint

        def on_checkpoint(path, state):
            push(path, state)  # in the store before anyone is told the checkpoint exists
            if then is not None:
                then(path, state)

    result = train(node, load_train_data(node.data.manifest), metrics_callback=metrics_callback,
                   on_checkpoint=on_checkpoint)
    if stored and info.is_main:
        push_results(node.output_dir, spec.config.train.output_dir)
    barrier()
    return result


def main(argv: list[str] | None = None) -> int:
    from magdi_dist.config import ConfigError, load_config, or_exit, with_durable_outputs

    parser = argparse.ArgumentParser(prog="python -m magdi_dist.launch.rank")
    source = parser.add_mutually_exclusive_group(required=True)
    # Not --run: torchrun parses abbreviations after the script too, and takes it for its --run-path.
    source.add_argument("--run-file", help="run.json a driver wrote (launch/resolve.py).")
    source.add_argument("--config", help="Run config YAML: rank 0 resolves the run and prepares the data.")
    parser.add_argument("--resume", action=argparse.BooleanOptionalAction, default=True,
                        help="With --config: resume from the newest complete checkpoint (--no-resume deletes them).")
    parser.add_argument("--storage", default=None, help="Root for relative output paths (or $MAGDI_STORAGE).")
    parser.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("overrides", nargs="*", help="key.sub=value (with --config)")
    args = parser.parse_args(argv)
    if args.run_file and args.overrides:
        parser.error("overrides go to the driver that resolves the run, not to --run-file")
    cfg = None if args.run_file else or_exit(lambda: with_durable_outputs(load_config(args.config, args.overrides),
                                                                     args.storage))

    from magdi_dist.run_spec import RUN_FILE, read_run
    from magdi_dist.train.checkpoint import CheckpointMismatch
    from magdi_dist.train.dist import barrier, init_distributed

    info = init_distributed()
    with contextlib.ExitStack() as driver:  # rank 0 of a --config launch holds the output folder's lock
        run_file = args.run_file
        if cfg is not None:
            run_file = join(cfg.train.output_dir, RUN_FILE)
            if info.is_main:
                from magdi_dist.launch.lock import RunLocked
                from magdi_dist.launch.resolve import claimed, prepare_and_publish, resolve_run
                from magdi_dist.launch.stage import on_node, pull, remote

                try:
                    if remote(cfg):
                        pull(cfg)
                    spec = resolve_run(on_node(cfg), world_size=info.world_size, accelerator=info.accelerator,
                                       resume=args.resume, check_memory=False)
                    driver.enter_context(claimed(spec, stored=cfg))
                except (ConfigError, CheckpointMismatch, RunLocked) as err:  # torchrun stops the others
                    print(f"error: {err}", file=sys.stderr)
                    return 2
                prepare_and_publish(spec, stored=cfg)
            barrier()
        spec = read_run(run_file)
        from magdi_dist.data.shards import ShardIntegrityError
        from magdi_dist.train.checkpoint import CheckpointSpaceError
        from magdi_dist.train.loop import TrainingDiverged

        try:
            result = run_rank(spec)
        except (CheckpointSpaceError, TrainingDiverged, ShardIntegrityError) as err:
            print(f"error: rank {info.rank}: {err}", file=sys.stderr)  # one line per rank, not a traceback each
            return 2
    if info.is_main:  # the line magdi-dist train prints for one rank (a stored run's export: in the store)
        stored = is_uri(spec.config.train.output_dir)
        export = join(spec.config.train.output_dir, "export") if result.export_dir and stored else result.export_dir
        print(f"trained to step {result.step}/{result.total_steps}; export {export}", flush=True)
    return 0

if __name__ == "__main__":
    sys.exit(main())
