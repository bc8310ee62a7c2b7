"""Does a change to the supervisor keep its behaviour? Every scenario, every cycle, byte for byte.

``python bench/supervisor_equivalence.py record OUT.json [--tree DIR] [SCENARIO ...]`` runs the
scenarios (default: every shipped one) in closed loop at model level (``run_scenario``) with the
supervisor of the checkout in DIR (default: this one) and keeps, per scenario, a hash of every
cycle's writes and status (``repr``: every float to its last bit, the status keys in order) and
the run's summary without its timings.
``python bench/supervisor_equivalence.py compare BEFORE.json AFTER.json`` says whether two
records agree and, where they do not, the first cycle that differs.

Record the revision you start from (``--tree`` a ``git worktree`` of it), then each change: the
plant only sees the writes, so identical writes mean an identical run, and identical status
means identical reports and telemetry.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import multiprocessing
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent


def record_scenario(tree: str, name: str) -> dict[str, Any]:
    """One scenario's per-cycle hashes and summary, with the supervisor of ``tree``."""
    sys.path.insert(0, tree)
    from gateway.control.supervisor import Supervisor  # noqa: PLC0415 - the tree under test
    from simulators.harness import run_scenario  # noqa: PLC0415

    assert Path(sys.modules["gateway"].__file__ or "").resolve().is_relative_to(Path(tree).resolve())
    cycles: list[str] = []
    total = hashlib.sha256()
    original = Supervisor.step

    def hashing(self: Any, view: Any, state: Any, now_s: float) -> Any:
        result = original(self, view, state, now_s)
        text = f"{now_s!r}|{result.writes!r}|{list(result.status.items())!r}".encode()
        total.update(text)
        cycles.append(hashlib.blake2b(text, digest_size=6).hexdigest())
        return result

    Supervisor.step = hashing  # type: ignore[method-assign]
    try:
        summary = run_scenario(name, plot=False).as_dict()
    finally:
        Supervisor.step = original  # type: ignore[method-assign]
    summary.pop("timings")
    return {"digest": total.hexdigest(), "cycles": cycles, "summary": summary}


def record(out: Path, tree: Path, names: list[str], workers: int) -> None:
    """Run the scenarios with ``tree``'s supervisor and write their hashes and summaries to ``out``."""
    sys.path.insert(0, str(tree))
    from simulators.scenario import builtin_scenarios, load_scenario  # noqa: PLC0415

    names = names or builtin_scenarios()
    ordered = sorted(names, key=lambda name: -load_scenario(name).duration_s)
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
        futures = {name: pool.submit(record_scenario, str(tree), name) for name in ordered}
        results = {name: future.result() for name, future in futures.items()}
    out.write_text(json.dumps(results, sort_keys=True, default=repr))
    for name, result in sorted(results.items()):
        print(f"{name:>24}: {len(result['cycles']):6d} cycles  {result['digest'][:16]}")


def compare(before_path: Path, after_path: Path) -> int:
    """0 when every scenario of ``before`` has the same cycles and summary in ``after``."""
    before = json.loads(before_path.read_text())
    after = json.loads(after_path.read_text())
    failed = 0
    for name, old in sorted(before.items()):
        new = after.get(name)
        if new is None:
            print(f"{name:>24}: missing")
            failed += 1
            continue
        if old["digest"] == new["digest"] and old["summary"] == new["summary"]:
            print(f"{name:>24}: identical ({len(old['cycles'])} cycles)")
            continue
        failed += 1
        first = next(
            (i for i, (a, b) in enumerate(zip(old["cycles"], new["cycles"], strict=False)) if a != b),
            min(len(old["cycles"]), len(new["cycles"])),
        )
        same_summary = "same summary" if old["summary"] == new["summary"] else "summary differs"
        counts = f"{len(old['cycles'])} -> {len(new['cycles'])} cycles"
        print(f"{name:>24}: DIFFERS from cycle {first} ({counts}, {same_summary})")
    return 1 if failed else 0


def main() -> int:
    """``record`` or ``compare``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    rec = sub.add_parser("record")
    rec.add_argument("out", type=Path)
    rec.add_argument("scenarios", nargs="*")
    rec.add_argument("--tree", type=Path, default=REPO, help="checkout whose supervisor runs (default: this one)")
    rec.add_argument("--workers", type=int, default=2)
    cmp = sub.add_parser("compare")
    cmp.add_argument("before", type=Path)
    cmp.add_argument("after", type=Path)
    args = parser.parse_args()
    if args.command == "record":
        record(args.out, args.tree.resolve(), args.scenarios, args.workers)
        return 0
    return compare(args.before, args.after)


if __name__ == "__main__":
    sys.exit(main())
