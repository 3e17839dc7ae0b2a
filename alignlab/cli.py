"""The `alignlab` command line: train, decode, label, diagnose, demo, merge, objectives, decoders."""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading

from alignlab.errors import AlignlabError


def _train(args: argparse.Namespace) -> None:
    from alignlab.config import load_config
    from alignlab.train import train

    config = load_config(args.config, args.set)
    if args.out:
        config.out_dir = args.out
    train(config, resume=args.resume, overwrite=args.overwrite)


def _demo(args: argparse.Namespace) -> None:
    from alignlab.demo import run_demo

    summary = run_demo(out_dir=args.out, seed=args.seed, progress=not args.quiet)
    if summary["dpo"]["reward"] <= summary["reference"]["reward"]:
        print("warning: the DPO model did not reach a higher mean reward than the reference", file=sys.stderr)


def _decode(args: argparse.Namespace) -> None:
    from alignlab.decode.run import load_decode_config, run_decode

    config = load_decode_config(args.config, args.set)
    if args.out:
        config.out_dir = args.out
    if args.quiet:
        config.progress = False
    summary = run_decode(config, resume=args.resume, overwrite=args.overwrite)
    print(format_decode_table(summary))


def format_decode_table(summary: dict) -> str:
    lines = [f"{'method':<20} {'reward':>8} {'KL (nats)':>10} {'kind':<9} {'tokens/s':>9}"]
    for point in summary["methods"]:
        bound = f" (bound {point['kl_bound']:.3f})" if "kl_bound" in point else ""
        rate = point["cost"]["tokens_per_s"] or 0
        lines.append(f"{point['label']:<20} {point['reward']:>8.3f} {point['kl']:>10.3f} {point['kl_kind']:<9} "
                     f"{rate:>9.0f}{bound}")
    return "\n".join(lines)


def _label(args: argparse.Namespace) -> None:
    from alignlab.online.label import label, load_label_config

    config = load_label_config(args.reward, args.set)
    if args.quiet:
        config.progress = False
    label(config, args.input, args.output)


def _diagnose_ches(args: argparse.Namespace) -> None:
    from alignlab.diagnose.run import diagnose_ches

    diagnose_ches(args.data, args.model, args.out, args.drop_top, args.batch_size, args.max_length,
                  args.max_prompt_length, args.overwrite, args.trust_remote_code, not args.quiet)


def _decoders(_: argparse.Namespace) -> None:
    from alignlab import decode, rewards

    print(f"{'decoder':<14} {'reward':<8} summary")
    for spec in decode.available():
        print(f"{spec.name:<14} {'needed' if spec.needs_reward else 'no':<8} {spec.summary}")
    print(f"\n{'reward':<14} summary")
    for name, summary in rewards.available():
        print(f"{name:<14} {summary}")


def _merge(args: argparse.Namespace) -> None:
    from alignlab.models.adapters import merge_adapters

    out = merge_adapters(args.adapters, args.out, args.base, args.trust_remote_code)
    print(f"merged model written to {out}")


def _objectives(_: argparse.Namespace) -> None:
    from alignlab import objectives

    print(f"{'name':<18} {'data':<12} {'reference':<10} summary")
    for spec in objectives.available():
        formats = "/".join(spec.data_formats)
        summary = spec.summary if len(spec.summary) <= 76 else spec.summary[:75].rstrip() + "…"
        print(f"{spec.name:<18} {formats:<12} {'needed' if spec.needs_reference else 'no':<10} {summary}")


def _add_set_option(parser: argparse.ArgumentParser, example: str) -> None:
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help=f"override a config value, e.g. --set {example} (repeatable)")


def _add_label_command(commands) -> None:
    labelling = commands.add_parser("label", help="score completions with a reward (sampling them for prompt-only "
                                    "records) into scored lists or pairs for offline training")
    labelling.add_argument("--reward", required=True, metavar="CONFIG",
                           help="YAML config (reward, model, samples, output: scored|paired, ...; see "
                           "examples/label.yaml) or just a reward name")
    labelling.add_argument("input", help="records with a prompt, and completions/completion or nothing")
    labelling.add_argument("output", help="the JSONL file to write")
    _add_set_option(labelling, "output=paired")
    labelling.add_argument("--quiet", action="store_true", help="no progress bars")
    labelling.set_defaults(run=_label)


def _add_diagnose_commands(commands) -> None:
    diagnosing = commands.add_parser("diagnose", help="diagnostics of data and models (CHES, …)")
    diagnostics = diagnosing.add_subparsers(dest="diagnostic", required=True, metavar="DIAGNOSTIC")
    ches = diagnostics.add_parser("ches", help="rank preference pairs by CHES (likelihood displacement risk) and "
                                  "write the data without the riskiest")
    ches.add_argument("data", help="paired records (prompt, chosen, rejected)")
    ches.add_argument("--model", default="alignlab/tiny-llama", help="the model to be trained, at its starting "
                      "point (default: the embedded model)")
    ches.add_argument("--out", required=True, help="output folder (new or empty, or --overwrite)")
    ches.add_argument("--drop-top", type=float, default=0.05, help="fraction of pairs with the highest LN-CHES to "
                      "drop (default 0.05)")
    ches.add_argument("--batch-size", type=int, default=16)
    ches.add_argument("--max-length", type=int, default=512)
    ches.add_argument("--max-prompt-length", type=int, default=256)
    ches.add_argument("--overwrite", action="store_true", help="clear the output folder first")
    ches.add_argument("--trust-remote-code", action="store_true")
    ches.add_argument("--quiet", action="store_true", help="no progress bars")
    ches.set_defaults(run=_diagnose_ches)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="alignlab",
        description="Align language models with preferences: train, decode, diagnose, on one reward-KL frontier.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    train = commands.add_parser("train", help="train a model with a preference objective from a YAML config")
    train.add_argument("config", help="YAML config (see examples/dpo.yaml)")
    _add_set_option(train, "train.lr=1e-5")
    train.add_argument("--out", help="run folder (overrides out_dir)")
    train.add_argument("--resume", action="store_true", help="continue from the run folder's latest checkpoint")
    train.add_argument("--overwrite", action="store_true", help="clear the run folder first (it must otherwise be "
                       "new or empty)")
    train.set_defaults(run=_train)

    demo = commands.add_parser("demo", help="controlled-sentiment DPO vs best-of-N and ARGS on the embedded model "
                               "(~2 min)")
    demo.add_argument("--out", default="runs/demo", help="output folder (default: runs/demo)")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--quiet", action="store_true", help="no progress bars")
    demo.set_defaults(run=_demo)

    decoding = commands.add_parser("decode", help="decoding-time alignment methods on one prompt set, on one "
                                   "reward-KL frontier, from a YAML config")
    decoding.add_argument("config", help="YAML config (see examples/decode.yaml)")
    _add_set_option(decoding, "n=8")
    decoding.add_argument("--out", help="output folder (overrides out_dir)")
    decoding.add_argument("--resume", action="store_true", help="keep the methods an earlier run finished")
    decoding.add_argument("--overwrite", action="store_true", help="clear the output folder first")
    decoding.add_argument("--quiet", action="store_true", help="no progress bars")
    decoding.set_defaults(run=_decode)

    _add_label_command(commands)
    _add_diagnose_commands(commands)

    listing_decoders = commands.add_parser("decoders", help="list the decoding methods and the rewards")
    listing_decoders.set_defaults(run=_decoders)

    merge = commands.add_parser("merge", help="fold a run's LoRA adapters into its base model and save the result")
    merge.add_argument("adapters", help="folder with the adapters (a LoRA run's final/)")
    merge.add_argument("--out", required=True, help="folder for the merged model")
    merge.add_argument("--base", help="base model (default: the one the adapters record)")
    merge.add_argument("--trust-remote-code", action="store_true", help="allow the base model's own code to run")
    merge.set_defaults(run=_merge)

    listing = commands.add_parser("objectives", help="list the objectives, the data each needs, and its reference")
    listing.set_defaults(run=_objectives)
    return parser


class Terminated(Exception):
    """SIGTERM outside the training steps (start-up, reference pass, sampling, saving): nothing to checkpoint."""


def _on_sigterm(_signum, _frame) -> None:
    raise Terminated


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()  # alignlab shows its own progress
    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _on_sigterm) if main_thread else None  # the steps install their own
    try:
        args.run(args)
    except AlignlabError as error:
        print(f"alignlab: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("alignlab: interrupted; nothing more was saved", file=sys.stderr)
        return 130
    except Terminated:
        print("alignlab: stopped by SIGTERM outside the training steps: nothing was saved", file=sys.stderr)
        return 143
    except BrokenPipeError:  # the reader went away (`alignlab objectives | head`): nothing more to say
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, previous)
    return 0


if __name__ == "__main__":
    sys.exit(main())
