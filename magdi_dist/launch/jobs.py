"""Submit a ``ray_jobs/<job>.py`` entrypoint to a Ray cluster with the job SDK and stream its logs:
what ``ray job submit --working-dir . --runtime-env ray_jobs/runtime_env.yaml -- python
ray_jobs/<job>.py --config FILE`` does, as a library call (``magdi-dist submit``).

The working directory is uploaded, so the config file must lie inside it; it is passed to the job by
its path relative to the working directory. Ray 2.60 clusters use token auth by default: the SDK
reads the token the way every Ray client does (``RAY_AUTH_MODE=token`` plus ``~/.ray/auth_token``,
``RAY_AUTH_TOKEN_PATH`` or ``RAY_AUTH_TOKEN``).
"""

from __future__ import annotations

import asyncio
import shlex
from pathlib import Path
from typing import Any

import yaml

from magdi_dist.config import ConfigError
from magdi_dist.preprocess.pipeline import Log, print_log

JOBS = ("preprocess", "train", "study", "debate")
RUNTIME_ENV = Path("ray_jobs") / "runtime_env.yaml"


def build_runtime_env(working_dir: Path, env: dict[str, str] | None = None) -> dict[str, Any]:
    """ray_jobs/runtime_env.yaml of the working dir, pointed at it, plus extra env vars."""
    file = working_dir / RUNTIME_ENV
    runtime_env = yaml.safe_load(file.read_text()) if file.is_file() else {}
    runtime_env["working_dir"] = str(working_dir)
    runtime_env["env_vars"] = {**runtime_env.get("env_vars", {}), **(env or {})}
    return runtime_env


def entrypoint(job: str, config: Path, working_dir: Path, args: list[str]) -> str:
    if job not in JOBS:
        raise ConfigError(f"unknown job {job!r}; expected one of {', '.join(JOBS)}")
    script = working_dir / "ray_jobs" / f"{job}.py"
    if not script.is_file():
        raise FileNotFoundError(f"no entrypoint {script}")
    try:
        rel = config.resolve().relative_to(working_dir.resolve())
    except ValueError:
        raise ConfigError(f"config {config} is outside the working dir {working_dir} (what gets uploaded)") from None
    return shlex.join(["python", f"ray_jobs/{job}.py", "--config", rel.as_posix(), *args])


def submit(
    address: str,
    job: str,
    config: str | Path,
    args: list[str] | None = None,
    *,
    working_dir: str | Path = ".",
    env: dict[str, str] | None = None,
    follow: bool = True,
    log: Log = print_log,
) -> tuple[str, str]:
    """Submit, then (``follow``) stream the logs until the job ends; returns (job id, final status)."""
    from ray.job_submission import JobSubmissionClient

    wd = Path(working_dir).resolve()
    client = JobSubmissionClient(address)
    command = entrypoint(job, Path(config), wd, list(args or []))
    job_id = client.submit_job(entrypoint=command, runtime_env=build_runtime_env(wd, env))
    log(f"submitted {job_id} to {address}: {command}")
    if not follow:
        return job_id, client.get_job_status(job_id).value

    async def tail() -> None:
        async for lines in client.tail_job_logs(job_id):
            print(lines, end="", flush=True)

    asyncio.run(tail())  # returns when the job reaches a terminal state
    info = client.get_job_info(job_id)
    log(f"job {job_id}: {info.status.value}" + (f" ({info.message})" if info.message else ""))
    return job_id, info.status.value
