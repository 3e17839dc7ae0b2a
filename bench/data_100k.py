"""Memory and time of `alignlab data select` and `alignlab data synthesize`'s bookkeeping on a 100k-record pool.

    python bench/data_100k.py [--records 100000] [--targets 50] [--json]

The pool: `records` short texts like the embedded model's corpus (reviews, chat) and generated code, half each (the
generators of examples/data_selection.py). Each phase runs in a process of its own and reports its peak resident
memory (RSS) and seconds:

- ``select_random``: reading the pool and keeping 1,000 at random — the cost of holding the records, rows and files;
- ``select_zip_fit``: the same with ZIP-FIT against `targets` positive reviews (records × targets gzip compressions);
- ``synthesize_bookkeeping``: `data synthesize`'s reading of `records` prompts, its streamed rows.jsonl (one row per
  prompt, written by a stand-in synthesizer that returns a fixed pair — the policy's sampling costs the same per
  prompt at any pool size and is left out) and the pairs.jsonl written from it.

Prints each phase's peak RSS above an interpreter that imported the two commands (``baseline``: torch and
transformers come with them) and its seconds.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PHASES = ("baseline", "select_random", "select_zip_fit", "synthesize_bookkeeping")
EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def peak_rss_mb() -> float:
    """This process's peak resident memory: VmHWM (Linux; begins anew at exec), else ru_maxrss (which Linux carries
    over from the parent through fork and exec, so a parent holding the pool would inflate every phase)."""
    status = Path("/proc/self/status")
    if status.is_file():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def make_pool(folder: Path, records: int, targets: int) -> None:
    sys.path.insert(0, str(EXAMPLES))
    from data_selection import pool_records, target_texts

    def write(name: str, rows: list[dict]) -> None:
        (folder / name).write_text("".join(json.dumps(row) + "\n" for row in rows))

    write("pool.jsonl", pool_records(records // 2, records - records // 2, 0))
    write("target.jsonl", [{"prompt": "", "completion": text, "domain": "positive"}
                           for text in target_texts("positive", targets, 1)])
    write("prompts.jsonl", [{"prompt": f"Review number {i} of the film"} for i in range(records)])


def phase(name: str, folder: Path) -> None:
    """Run one phase in this process."""
    from alignlab.cli import main
    from alignlab.commands.data import synthesize
    from alignlab.run_folder import RunFolder

    if name.startswith("select"):
        method = name.split("_", 1)[1]
        main(["data", "select", str(folder / "pool.jsonl"), "--target", str(folder / "target.jsonl"), "--method",
              method, "-k", "1000", "--out", str(folder / name), "--overwrite", "--quiet"])
    elif name == "synthesize_bookkeeping":
        prompts = synthesize.read_prompts(str(folder / "prompts.jsonl"))
        run = RunFolder(folder / name).create(overwrite=True)
        synthesize.synthesize_rows(run, prompts, lambda index, prompt: {
            "prompt": prompt, "chosen": f"Be kind: {prompt}", "rejected": prompt, "chosen_reward": 0.5,
            "rejected_reward": 0.0, "root_reward": 0.0, "accepted": True}, progress=False)
        synthesize.finish(run, argparse.Namespace(method="p_aligner", keep_unaccepted=False), chat=False)
        run.unlock()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--targets", type=int, default=50)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--phase", choices=PHASES, help=argparse.SUPPRESS)
    parser.add_argument("--folder", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.phase:
        started = time.time()
        if args.phase != "baseline":
            phase(args.phase, Path(args.folder))
        else:  # what every phase imports: the commands, torch and transformers with them
            import alignlab.commands.data.select
            import alignlab.commands.data.synthesize  # noqa: F401
        print(json.dumps({"phase": args.phase, "peak_rss_mb": peak_rss_mb(), "seconds": time.time() - started}))
        return
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        make_pool(folder, args.records, args.targets)
        results = []
        for name in PHASES:
            output = subprocess.run([sys.executable, __file__, "--phase", name, "--folder", tmp], check=True,
                                    capture_output=True, text=True).stdout
            results.append(json.loads(output.strip().splitlines()[-1]))
    base = results[0]["peak_rss_mb"]
    if args.json:
        print(json.dumps({"records": args.records, "phases": results}))
        return
    print(f"{args.records} records, {args.targets} targets; peak RSS above the baseline ({base:.0f} MB)")
    for row in results[1:]:
        print(f"  {row['phase']:24s} {row['peak_rss_mb'] - base:8.0f} MB  {row['seconds']:7.1f} s")


if __name__ == "__main__":
    main()
