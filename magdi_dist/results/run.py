"""The block about one timed run of a command (the demo): its wall time against its budget, the load of
the machine around it, the machine and the commit. Read from the files collected with ``--extra``:

    stdout.txt   the command's output ("demo wall time: N s", printed by ``magdi-dist demo``)
    stderr.txt   ``/usr/bin/time -v`` output (its elapsed time and exit status)
    load_start   ``uptime`` just before the run, load_end just after
    commit       ``git rev-parse HEAD`` of the checkout that ran it
"""

from __future__ import annotations

import re

from magdi_dist.results.files import ResultsError
from magdi_dist.results.raw import Collected

# The demo's budget on an idle 2-core machine (issue 26: "a margin inside its 15 minutes, at most 12
# on an idle machine"): what its wall time is held against.
IDLE_BUDGET_S = 12 * 60


def _find(pattern: str, text: str, what: str) -> re.Match:
    m = re.search(pattern, text, re.M)
    if m is None:
        raise ResultsError(f"{what}: no line matching {pattern!r}")
    return m


def _elapsed_s(clock: str) -> float:
    """``/usr/bin/time``'s h:mm:ss or m:ss.cc in seconds."""
    total = 0.0
    for part in clock.split(":"):
        total = total * 60 + float(part)
    return total


def _load(text: str, what: str) -> str:
    return _find(r"load average:\s*([\d.]+),\s*([\d.]+),\s*([\d.]+)", text, what).group(0).split(":", 1)[1].strip()


def run(c: Collected) -> str:
    """Wall time against the idle budget, /usr/bin/time's view, the load around the run, machine, commit."""
    where = f"{c.folder}/extra"
    out = c.extra("stdout.txt")
    wall = float(_find(r"^demo wall time: ([\d.]+) s$", out, f"{where}/stdout.txt").group(1))
    timed = c.extra("stderr.txt")
    elapsed = _elapsed_s(_find(r"Elapsed \(wall clock\) time .*: ([\d:.]+)$", timed, f"{where}/stderr.txt").group(1))
    status = _find(r"Exit status: (\d+)$", timed, f"{where}/stderr.txt").group(1)
    margin = IDLE_BUDGET_S - wall
    verdict = (f"inside it, {margin:,.0f} s to spare" if margin >= 0 else f"**over it by {-margin:,.0f} s**")
    machines = {(m.get("cpu"), m.get("cores")) for m in
                (p.get("machine", {}) for p in c.provenance.get("cells", {}).values())}
    started = sorted(p.get("started") or "" for p in c.provenance.get("cells", {}).values())
    commit = c.extra("commit").strip()
    cell_commits = {p.get("commit") for p in c.provenance.get("cells", {}).values()}
    same = ("the one every cell's MLflow run names" if cell_commits == {commit}
            else f"**not** the one the cells' MLflow runs name ({', '.join(sorted(str(x)[:7] for x in cell_commits))})")
    dirty = {p.get("dirty") for p in c.provenance.get("cells", {}).values()}
    state = {frozenset([False]): "clean", frozenset([True]): "with uncommitted changes"}.get(frozenset(dirty),
                                                                                         "clean for some cells only")
    lines = [
        f"- **Wall time: {wall:,.0f} s** for the whole demo (its last line, `demo wall time`), against its budget "
        f"of {IDLE_BUDGET_S:,} s ({IDLE_BUDGET_S // 60} minutes) on an idle machine: {verdict}. "
        f"`/usr/bin/time -v` measured {elapsed:,.0f} s, exit status {status}.",
        f"- **Load average** (1, 5, 15 minutes, `uptime`): {_load(c.extra('load_start'), where + '/load_start')} "
        f"just before the run, {_load(c.extra('load_end'), where + '/load_end')} just after it.",
        "- **Machine:** " + "; ".join(f"{cpu}, {cores} logical cores" for cpu, cores in sorted(machines, key=str))
        + (f"; started {started[0][:10]}" if started and started[0] else "") + ".",
        f"- **Commit:** `{commit[:7]}` (`extra/commit`), {same}; the checkout was {state} when the cells started.",
    ]
    asked = re.search(r"^champion (\S+) \(version (\S+)\)\n\s+Q: (.*)\n\s+A: (.*)$", out, re.M)
    if asked:
        uri, version, question, answer = asked.groups()
        lines.append(f"- **The champion** `{uri}` (version {version}), loaded back from the registry, was asked "
                     f"\"{question}\" and answered \"{answer}\".")
    return "\n".join(lines)
