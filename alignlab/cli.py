"""The `alignlab` command line: one table from command names to the modules in `alignlab.commands`.

Adding a command is one module with ``add_arguments(parser)`` and ``run(args)`` plus one line in `COMMANDS`. Only
the module of the command asked for is imported (a quick ``--help``, and no model library loaded for a listing).
"""

from __future__ import annotations

import argparse
import errno
import importlib
import os
import signal
import sys
import threading
from dataclasses import dataclass

from alignlab.errors import AlignlabError


@dataclass(frozen=True)
class Command:
    words: str
    """What the user types: ``train``, or a group and a name (``diagnose ches``)."""
    module: str
    """The module under `alignlab.commands` with ``add_arguments`` and ``run``."""
    help: str


COMMANDS = (
    Command("train", "train", "train a model with a preference objective from a YAML config"),
    Command("demo", "demo", "controlled-sentiment DPO vs best-of-N and ARGS on the embedded model (under 2 min on 2 "
            "cores)"),
    Command("decode", "decode", "decoding-time alignment methods on one prompt set, on one reward-KL frontier, "
            "from a YAML config"),
    Command("label", "label", "score completions with a reward (sampling them for prompt-only records) into scored "
            "lists or pairs for offline training"),
    Command("diagnose ches", "diagnose.ches", "rank preference pairs by CHES (likelihood displacement risk) and "
            "write the data without the riskiest"),
    Command("diagnose token-kl", "diagnose.token_kl", "KL(model ‖ base) at each response position, teacher-forced "
            "on (prompt, response) records: how deep an alignment goes"),
    Command("diagnose bon-kl", "diagnose.bon_kl", "best-of-N's KL from reference samples with rewards: the bound, "
            "the exact value on the samples, Beirami's estimate"),
    Command("diagnose overopt", "diagnose.overopt", "over-optimisation indicators (top-k entropy and mass of "
            "generated tokens) for a training run's start, checkpoints and final weights"),
    Command("diagnose average", "diagnose.average", "average a model with its pre-alignment weights (whole model and "
            "per block of layers): reward against alignment tax, Pareto front, AMA choice"),
    Command("evaluate prefill", "evaluate.prefill", "prefilling attack: ASR when the first k tokens of a harmful "
            "response start the answer"),
    Command("evaluate decoding-attack", "evaluate.decoding_attack", "ASR over 49 decoding configurations × system "
            "prompt on/off"),
    Command("evaluate refusal", "evaluate.refusal", "refusal rate on harmful prompts and over-refusal on benign "
            "look-alikes (labelled safe/unsafe)"),
    Command("evaluate judge", "evaluate.judge", "a pairwise judge in both orders (consistency, primacy, recency, "
            "accuracy) and under bias injections (robustness)"),
    Command("evaluate fairness", "evaluate.fairness", "group fairness of a prompted Yes/No classifier: parity, FPR "
            "and equalised-odds gaps, per-group rates, remediations"),
    Command("redteam gbrt", "redteam.gbrt", "gradient-based red teaming: prompts learned through Gumbel-softmax "
            "so that the model's continuation scores unsafe (GBRT)"),
    Command("redteam promptattack", "redteam.promptattack", "PromptAttack: perturbation instructions, a fidelity "
            "filter and an ensemble against a classifier; ASR per instruction"),
    Command("redteam steering", "redteam.steering", "activation-steering attack (TA²): steering vectors from "
            "aligned/misaligned pairs, contrastive layer search, a multiplier sweep"),
    Command("redteam taxonomy", "redteam.taxonomy", "SAGE-RT-style red-team prompts from a harm taxonomy: expansion, "
            "query extraction, jailbreak templates, ASR per leaf and category"),
    Command("evaluate steerability", "evaluate.steerability", "steerability in a goal space: steering error, "
            "miscalibration and side effects of rewrites towards targets (sampling, best-of-N)"),
    Command("evaluate honesty", "evaluate.honesty", "honesty against the unaligned model: correct / wrong / "
            "I-don't-know answers, prudence, over-conservativeness"),
    Command("evaluate conformal-retrieval", "evaluate.conformal_retrieval", "conformal calibration of a retrieval "
            "distance cut-off (CONFLARE): coverage and retrieved chunks against alpha"),
    Command("data select", "data.select", "keep the K records of a pool that suit a target set (ZIP-FIT), the best "
            "by Deita score and diversity, or K at random"),
    Command("data synthesize", "data.synthesize", "preference pairs from prompts: P-Aligner's tree search over "
            "principle rewrites, or Anyprefer's judged candidates with feedback"),
    Command("report", "report", "(re)write a run folder's report.html from its files"),
    Command("compare", "compare", "several runs on one frontier, one table, curves overlaid"),
    Command("push", "push", "upload a run's final/ (weights, tokenizer, model card) to the hub"),
    Command("decoders", "decoders", "list the decoding methods and the rewards (NAME or --long: in full)"),
    Command("merge", "merge", "fold a run's LoRA adapters into its base model and save the result"),
    Command("objectives", "objectives", "list the objectives, the data each needs, and its reference (NAME or --long: "
            "in full)"),
)

GROUPS = {
    "diagnose": ("DIAGNOSTIC", "diagnostics of data and models (CHES, token KL, best-of-N KL, model averaging, "
                 "over-optimisation)"),
    "redteam": ("ATTACK", "red-teaming attacks that find a model's failures (GBRT, PromptAttack, activation "
                "steering, taxonomy-driven prompts)"),
    "data": ("STEP", "data for alignment: selection (ZIP-FIT, Deita) and synthesis (P-Aligner, "
             "Anyprefer)"),
    "evaluate": ("EVALUATION", "safety evaluations (prefilling and decoding attacks, refusal), judges, fairness, "
                 "steerability, honesty and conformal retrieval"),
}


def build_parser(argv: list[str]) -> argparse.ArgumentParser:
    """Every command listed with its help; the options only of the command `argv` names (its module imported)."""
    parser = argparse.ArgumentParser(
        prog="alignlab",
        description="Align language models with preferences: train, decode, diagnose, on one reward-KL frontier.",
    )
    parser.add_argument("--version", action=VersionAction, help="print the version and code revision, and exit")
    top = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    groups: dict[str, argparse._SubParsersAction] = {}
    asked = [word for word in argv[:2] if not word.startswith("-")]
    for command in COMMANDS:
        *group, name = command.words.split()
        if group and group[0] not in groups:
            metavar, help_text = GROUPS[group[0]]
            groups[group[0]] = top.add_parser(group[0], help=help_text).add_subparsers(
                dest=metavar.lower(), required=True, metavar=metavar)
        subparser = (groups[group[0]] if group else top).add_parser(name, help=command.help)
        if command.words.split() == asked[: len(group) + 1]:
            # the one lazy import of the command line: only the command asked for loads its libraries
            module = importlib.import_module(f"alignlab.commands.{command.module}")
            module.add_arguments(subparser)
            subparser.set_defaults(run=module.run)
    return parser


class VersionAction(argparse.Action):
    """``--version``: the version line, worked out only when asked for (it may read the source tree's git)."""

    def __init__(self, option_strings: list[str], dest: str = argparse.SUPPRESS, help: str | None = None) -> None:
        super().__init__(option_strings, dest, default=argparse.SUPPRESS, nargs=0, help=help)

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: object,
                 option_string: str | None = None) -> None:
        print(version_line())
        parser.exit()


def version_line() -> str:
    """``alignlab 0.1.0 (git abc1234)``: the package version and, in a git checkout, the commit (the same line a
    report's environment shows); imported here, as the commands are, so that ``--help`` loads no model library."""
    from alignlab.run_folder import code_version

    return code_version()


UNWRITABLE = (errno.ENOSPC, errno.EROFS, errno.EACCES, errno.EDQUOT, errno.EPERM)
"""Errors of a file system that will not take an output: said in one line, never a traceback."""


class Terminated(Exception):
    """SIGTERM outside the training steps (start-up, reference pass, sampling, saving): nothing to checkpoint."""


def _on_sigterm(_signum, _frame) -> None:
    raise Terminated


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser(argv).parse_args(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()  # alignlab shows its own progress
    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _on_sigterm) if main_thread else None  # the steps install their own
    try:
        args.run(args)
        _leave_process_group()  # on success only: after an error, torchrun tears the others down
    except AlignlabError as error:
        print(f"alignlab: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("alignlab: interrupted; nothing more was saved", file=sys.stderr)
        return 130
    except Terminated:
        print("alignlab: stopped by SIGTERM outside the training steps: nothing was saved of the work in progress "
              "(what was finished before it, such as decoded methods, is kept)", file=sys.stderr)
        return 143
    except BrokenPipeError:  # the reader went away (`alignlab objectives | head`): nothing more to say
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except OSError as error:
        if error.errno not in UNWRITABLE:
            raise
        print(f"alignlab: error: cannot write {error.filename or 'an output file'}: {error.strerror} (what was "
              "written before it is kept)", file=sys.stderr)
        return 2
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, previous)
    return 0


def _leave_process_group() -> None:
    """End this process's part of a torchrun/accelerate process group before the interpreter exits: left to exit
    with it, gloo's threads can abort a finished process ("terminate called without an active exception")."""
    if "torch.distributed" not in sys.modules:
        return
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


if __name__ == "__main__":
    sys.exit(main())
