"""The `alignlab` command line: train, decode, label, diagnose, demo, merge, objectives, decoders."""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading

from alignlab.errors import AlignlabError, ConfigError


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


def _diagnose_token_kl(args: argparse.Namespace) -> None:
    from alignlab.diagnose.token_kl import diagnose_token_kl

    diagnose_token_kl(args.data, args.model, args.base, args.out, args.prompt_field, args.response_field,
                      args.positions, args.batch_size, args.max_length, args.max_prompt_length, args.chat,
                      args.overwrite, args.trust_remote_code, not args.quiet)


def _evaluate_prefill(args: argparse.Namespace) -> None:
    from alignlab.evaluate.safety import evaluate_prefill

    evaluate_prefill(args.data, args.model, args.out, args.prompt_field, args.response_field,
                     tuple(args.prefill_tokens), args.samples, args.max_new_tokens, args.phrases, args.judge,
                     args.judge_threshold, args.chat, args.seed, args.batch_size, args.limit, args.case_sensitive,
                     args.overwrite, args.trust_remote_code, not args.quiet)


def _evaluate_decoding_attack(args: argparse.Namespace) -> None:
    from alignlab.evaluate.safety import evaluate_decoding_attack

    evaluate_decoding_attack(args.data, args.model, args.out, args.prompt_field, args.samples, args.max_new_tokens,
                             args.system_prompt, args.phrases, args.judge, args.judge_threshold, args.chat, args.seed,
                             args.batch_size, args.limit, None, args.case_sensitive, args.overwrite,
                             args.trust_remote_code, not args.quiet)


def _evaluate_refusal(args: argparse.Namespace) -> None:
    from alignlab.evaluate.safety import evaluate_refusal

    evaluate_refusal(args.data, args.model, args.out, args.prompt_field, args.label_field, args.type_field,
                     args.max_new_tokens, args.phrases, args.chat, args.batch_size, args.limit, args.case_sensitive,
                     args.overwrite, args.trust_remote_code, not args.quiet)


def _diagnose_bon_kl(args: argparse.Namespace) -> None:
    from alignlab.diagnose.bon_kl import diagnose_bon_kl

    diagnose_bon_kl(args.data, args.out, args.n, args.prompt_field, args.reward_field, args.logp_field or None,
                    args.method, args.draws, args.seed, args.overwrite)


def _evaluate_judge(args: argparse.Namespace) -> None:
    from alignlab import rewards
    from alignlab.evaluate.judges import DEFAULT_JUDGE_TEMPLATE, INJECTIONS, evaluate_judge

    reward = rewards.entry_from_argument(args.reward) if args.reward else None
    template = _read_template(args.template) if args.template else DEFAULT_JUDGE_TEMPLATE
    evaluate_judge(args.data, args.out, args.model, reward, template, args.choices, args.chat, args.tie_margin,
                   tuple(args.biases or INJECTIONS), args.favour, args.batch_size, args.max_length,
                   trust_remote_code=args.trust_remote_code, overwrite=args.overwrite, progress=not args.quiet)


def _evaluate_fairness(args: argparse.Namespace) -> None:
    from alignlab.evaluate.fairness import DEFAULT_QUESTION, DEFAULT_TEMPLATE, evaluate_fairness

    template = _read_template(args.template) if args.template else DEFAULT_TEMPLATE
    instruction = True if args.instruction == "" else (args.instruction or False)
    evaluate_fairness(args.data, args.out, args.model, args.text_field, args.group_field, args.label_field,
                      args.threshold, args.question or DEFAULT_QUESTION, template, tuple(args.answers), instruction,
                      args.fpr_target, args.chat, args.batch_size, args.max_length,
                      trust_remote_code=args.trust_remote_code, overwrite=args.overwrite, progress=not args.quiet)


def _read_template(value: str) -> str:
    """A prompt template given inline, or @FILE for one read from a file."""
    from pathlib import Path

    if not value.startswith("@"):
        return value
    path = Path(value[1:])
    if not path.is_file():
        raise ConfigError(f"template file not found: {path}")
    return path.read_text()


def _diagnose_average(args: argparse.Namespace) -> None:
    from alignlab import rewards
    from alignlab.diagnose.averaging import diagnose_average

    diagnose_average(args.pre, args.aligned, args.out, args.prompts, args.general_text,
                     rewards.entry_from_argument(args.reward), tuple(args.alphas), tuple(args.block_alphas),
                     args.blocks, args.tax_budget, args.lam, args.max_new_tokens, args.batch_size, args.max_length,
                     args.seed, args.prompt_field, args.text_field, args.save_chosen,
                     trust_remote_code=args.trust_remote_code, overwrite=args.overwrite, progress=not args.quiet)


def _diagnose_overopt(args: argparse.Namespace) -> None:
    from alignlab.diagnose.overopt import diagnose_overopt

    diagnose_overopt(args.run_dir, args.out, args.prompts, args.prompt_field, args.limit, args.top_k,
                     args.max_new_tokens, args.seed, args.batch_size, args.overwrite, not args.quiet)


def _report(args: argparse.Namespace) -> None:
    from alignlab.report.html import write_report

    print(f"wrote {write_report(args.run_dir)}")


def _compare(args: argparse.Namespace) -> None:
    from alignlab.report.compare import compare

    compare(args.run_dirs, args.out, args.overwrite)


def _push(args: argparse.Namespace) -> None:
    from alignlab.report.card import push

    push(args.folder, args.repo_id, args.private)


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


def _add_output_options(parser: argparse.ArgumentParser, lengths: bool = True) -> None:
    """--out, --overwrite, --quiet, --trust-remote-code (and --max-length/--max-prompt-length) of a diagnostic."""
    parser.add_argument("--out", required=True, help="output folder (new or empty, or --overwrite)")
    if lengths:
        parser.add_argument("--max-length", type=int, default=512)
        parser.add_argument("--max-prompt-length", type=int, default=256)
    parser.add_argument("--overwrite", action="store_true", help="clear the output folder first")
    parser.add_argument("--trust-remote-code", action="store_true", help="allow a model's own code to run")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def _add_diagnose_commands(commands) -> None:
    diagnosing = commands.add_parser("diagnose", help="diagnostics of data and models (CHES, token KL, best-of-N KL, "
                                     "model averaging, over-optimisation)")
    diagnostics = diagnosing.add_subparsers(dest="diagnostic", required=True, metavar="DIAGNOSTIC")
    ches = diagnostics.add_parser("ches", help="rank preference pairs by CHES (likelihood displacement risk) and "
                                  "write the data without the riskiest")
    ches.add_argument("data", help="paired records (prompt, chosen, rejected)")
    ches.add_argument("--model", default="alignlab/tiny-llama", help="the model to be trained, at its starting "
                      "point (default: the embedded model)")
    ches.add_argument("--drop-top", type=float, default=0.05, help="fraction of pairs with the highest LN-CHES to "
                      "drop (default 0.05)")
    ches.add_argument("--batch-size", type=int, default=16)
    _add_output_options(ches)
    ches.set_defaults(run=_diagnose_ches)

    token_kl = diagnostics.add_parser("token-kl", help="KL(model ‖ base) at each response position, teacher-forced "
                                      "on (prompt, response) records: how deep an alignment goes")
    token_kl.add_argument("data", help="records with a prompt and a response (field names: --prompt-field, "
                          "--response-field)")
    token_kl.add_argument("--model", required=True, help="the aligned model")
    token_kl.add_argument("--base", required=True, help="the model it was aligned from")
    token_kl.add_argument("--prompt-field", default="prompt")
    token_kl.add_argument("--response-field", default="response")
    token_kl.add_argument("--positions", type=int, default=64, help="response positions reported (default 64)")
    token_kl.add_argument("--batch-size", type=int, default=8)
    token_kl.add_argument("--chat", action=argparse.BooleanOptionalAction, default=None,
                          help="string prompts as a chat user turn (default: when the tokenizer has a template)")
    _add_output_options(token_kl)
    token_kl.set_defaults(run=_diagnose_token_kl)

    _add_model_diagnostics(diagnostics)


def _add_model_diagnostics(diagnostics) -> None:
    """`diagnose bon-kl`, `overopt`, `average`: diagnostics of models and samples rather than of data."""
    bon_kl = diagnostics.add_parser("bon-kl", help="best-of-N's KL from reference samples with rewards: the bound, "
                                    "the exact value on the samples, Beirami's estimate")
    bon_kl.add_argument("data", help="reference samples with prompt, reward (and ref_logp), e.g. a decode run's "
                        "samples.jsonl")
    bon_kl.add_argument("--n", type=int, nargs="+", default=[1, 2, 4, 8, 16, 32, 64], help="the N to report")
    bon_kl.add_argument("--method", help="only the rows of this method (decode runs' samples.jsonl)")
    bon_kl.add_argument("--prompt-field", default="prompt")
    bon_kl.add_argument("--reward-field", default="reward")
    bon_kl.add_argument("--logp-field", default="ref_logp", help="log π_ref of each sample ('' when the data has "
                        "none: no estimate)")
    bon_kl.add_argument("--draws", type=int, default=256, help="simulated best-of-N draws per prompt (default 256)")
    bon_kl.add_argument("--seed", type=int, default=0)
    bon_kl.add_argument("--out", required=True, help="output folder (new or empty, or --overwrite)")
    bon_kl.add_argument("--overwrite", action="store_true", help="clear the output folder first")
    bon_kl.set_defaults(run=_diagnose_bon_kl)

    overopt = diagnostics.add_parser("overopt", help="over-optimisation indicators (top-k entropy and mass of "
                                     "generated tokens) for a training run's start, checkpoints and final weights")
    overopt.add_argument("run_dir", help="a training run folder")
    overopt.add_argument("--prompts", help="held-out prompts (default: the run's data.eval)")
    overopt.add_argument("--prompt-field", default="prompt")
    overopt.add_argument("--limit", type=int, default=32, help="prompts used (default 32)")
    overopt.add_argument("--top-k", type=int, default=10)
    overopt.add_argument("--max-new-tokens", type=int, default=32)
    overopt.add_argument("--seed", type=int, default=0)
    overopt.add_argument("--batch-size", type=int, default=16)
    overopt.add_argument("--out", required=True, help="output folder (new or empty, or --overwrite)")
    overopt.add_argument("--overwrite", action="store_true", help="clear the output folder first")
    overopt.add_argument("--quiet", action="store_true", help="no progress bars")
    overopt.set_defaults(run=_diagnose_overopt)

    average = diagnostics.add_parser("average", help="average a model with its pre-alignment weights (whole model and "
                                     "per block of layers): reward against alignment tax, Pareto front, AMA choice")
    average.add_argument("--pre", required=True, help="the model before alignment")
    average.add_argument("--aligned", required=True, help="the aligned model")
    average.add_argument("--prompts", required=True, help="prompts the reward is measured on")
    average.add_argument("--general-text", required=True, help="held-out general text (field --text-field): the tax "
                         "is the rise of its NLL over the pre model's")
    average.add_argument("--reward", required=True, help="a reward name, or a YAML file with one reward entry")
    average.add_argument("--alphas", type=float, nargs="+", default=[0.0, 0.25, 0.5, 0.75, 1.0],
                         help="whole-model α (weight of the pre model)")
    average.add_argument("--block-alphas", type=float, nargs="+", default=[0.0, 0.5, 1.0],
                         help="α grid of each block")
    average.add_argument("--blocks", type=int, default=3, help="blocks of consecutive layers (default 3)")
    average.add_argument("--tax-budget", type=float, help="AMA: the highest-reward setting with at most this tax "
                         "(default: half the aligned model's tax)")
    average.add_argument("--lam", type=float, help="AMA: maximise reward − λ·tax instead of a budget")
    average.add_argument("--max-new-tokens", type=int, default=32)
    average.add_argument("--batch-size", type=int, default=16)
    average.add_argument("--seed", type=int, default=0)
    average.add_argument("--prompt-field", default="prompt")
    average.add_argument("--text-field", default="text")
    average.add_argument("--save-chosen", action="store_true", help="save the chosen averaged model in OUT/chosen")
    _add_output_options(average)
    average.set_defaults(run=_diagnose_average)


def _add_safety_options(parser: argparse.ArgumentParser, max_new_tokens: int | None, judge: bool = True) -> None:
    parser.add_argument("--model", default="alignlab/tiny-llama", help="the model to attack (default: the embedded "
                        "model)")
    parser.add_argument("--prompt-field", default="prompt")
    parser.add_argument("--max-new-tokens", type=int, default=max_new_tokens,
                        help=f"default {max_new_tokens or '512, or as many as fit in the context'}")
    parser.add_argument("--phrases", help="refusal phrase list: a text file (one a line), a JSON list, or "
                        "FILE.json#NAME for one named list (default: alignlab's own list)")
    parser.add_argument("--case-sensitive", action="store_true", help="match the refusal phrases case-sensitively "
                        "(default: case-insensitive)")
    if judge:
        parser.add_argument("--samples", type=int, default=1, help="samples per prompt and setting (default 1)")
        parser.add_argument("--judge", help="a reward used as harmfulness judge (a name, or a YAML file with one "
                            "reward entry); harmful when its score is above --judge-threshold")
        parser.add_argument("--judge-threshold", type=float, default=0.5)
        parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--chat", action=argparse.BooleanOptionalAction, default=None,
                        help="use the tokenizer's chat template (default: when it has one)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--limit", type=int, help="use only the first N records")
    _add_output_options(parser, lengths=False)


def _add_evaluate_commands(commands) -> None:
    evaluating = commands.add_parser("evaluate", help="safety evaluations (prefilling and decoding attacks, refusal), "
                                     "judges and fairness")
    evaluations = evaluating.add_subparsers(dest="evaluation", required=True, metavar="EVALUATION")
    prefill = evaluations.add_parser("prefill", help="prefilling attack: ASR when the first k tokens of a harmful "
                                     "response start the answer")
    prefill.add_argument("data", help="records with a harmful prompt and a harmful response")
    prefill.add_argument("--response-field", default="response")
    prefill.add_argument("--prefill-tokens", type=int, nargs="+", default=[0, 5, 10, 20, 40], metavar="K")
    _add_safety_options(prefill, None)
    prefill.set_defaults(run=_evaluate_prefill)

    attack = evaluations.add_parser("decoding-attack", help="ASR over 49 decoding configurations × system prompt "
                                    "on/off")
    attack.add_argument("data", help="records with a harmful prompt")
    attack.add_argument("--system-prompt", default=None, help="the system prompt of the 'with' half (default: "
                        "alignlab's own safety prompt)")
    _add_safety_options(attack, 100)
    attack.set_defaults(run=_evaluate_decoding_attack)

    refusal = evaluations.add_parser("refusal", help="refusal rate on harmful prompts and over-refusal on benign "
                                     "look-alikes (labelled safe/unsafe)")
    refusal.add_argument("data", help="records with a prompt and a label (unsafe/harmful/1 or safe/benign/0)")
    refusal.add_argument("--label-field", default="label")
    refusal.add_argument("--type-field", help="a field to break the rates down by (e.g. XSTest's type)")
    _add_safety_options(refusal, 64, judge=False)
    refusal.set_defaults(run=_evaluate_refusal)

    _add_judge_commands(evaluations)


def _add_judge_commands(evaluations) -> None:
    """`evaluate judge` and `evaluate fairness`: how far a judge or a classifier can be trusted."""
    judge = evaluations.add_parser("judge", help="a pairwise judge in both orders (consistency, primacy, recency, "
                                   "accuracy) and under bias injections (robustness)")
    judge.add_argument("data", help="paired records (prompt, chosen, rejected)")
    judging = judge.add_mutually_exclusive_group(required=True)
    judging.add_argument("--model", help="a causal LM prompted to answer A or B")
    judging.add_argument("--reward", help="a reward (name, or a YAML file with one entry): the higher score wins")
    judge.add_argument("--template", help="the comparison prompt ({question}, {first}, {second}), inline or @FILE")
    judge.add_argument("--choices", nargs=2, metavar=("FIRST", "SECOND"), help="the answer tokens (default ' A' "
                       "' B'; each must be one token)")
    judge.add_argument("--chat", action="store_true", help="render the template as a chat user turn")
    judge.add_argument("--tie-margin", type=float, default=0.0)
    judge.add_argument("--biases", nargs="*", help="injections to run (default: bandwagon authority distraction "
                       "reflection)")
    judge.add_argument("--favour", choices=("other", "first", "second"), default="other",
                       help="which response an injection favours (default: the one not picked)")
    judge.add_argument("--batch-size", type=int, default=16)
    judge.add_argument("--max-length", type=int, default=1024)
    _add_output_options(judge, lengths=False)
    judge.set_defaults(run=_evaluate_judge)

    fairness = evaluations.add_parser("fairness", help="group fairness of a prompted Yes/No classifier: parity, FPR "
                                      "and equalised-odds gaps, per-group rates, remediations")
    fairness.add_argument("data", help="records with a text, a group and a 0/1 label")
    fairness.add_argument("--model", default="alignlab/tiny-llama")
    fairness.add_argument("--text-field", default="text")
    fairness.add_argument("--group-field", default="group")
    fairness.add_argument("--label-field", default="label")
    fairness.add_argument("--question", help="the question asked about each text")
    fairness.add_argument("--template", help="the prompt ({text}, {question}), inline or @FILE")
    fairness.add_argument("--answers", nargs=2, default=[" Yes", " No"], metavar=("YES", "NO"),
                          help="the two answer tokens (each must be one token of the model's tokenizer)")
    fairness.add_argument("--threshold", type=float, default=0.5, help="ŷ = 1 when s ≥ threshold")
    fairness.add_argument("--instruction", nargs="?", const="", help="score again with a fairness instruction "
                          "first (alignlab's own, or the given text)")
    fairness.add_argument("--fpr-target", type=float, help="also fit per-group thresholds giving each group this FPR")
    fairness.add_argument("--chat", action="store_true", help="render the prompt as a chat user turn")
    fairness.add_argument("--batch-size", type=int, default=16)
    fairness.add_argument("--max-length", type=int, default=1024)
    _add_output_options(fairness, lengths=False)
    fairness.set_defaults(run=_evaluate_fairness)


def _add_report_commands(commands) -> None:
    """`report`, `compare`, `push`: what a run made, shown, compared and shared."""
    report = commands.add_parser("report", help="(re)write a run folder's report.html from its files")
    report.add_argument("run_dir", help="a run folder (train, demo, decode, online)")
    report.set_defaults(run=_report)

    comparing = commands.add_parser("compare", help="several runs on one frontier, one table, curves overlaid")
    comparing.add_argument("run_dirs", nargs="+", help="run folders (demo, decode, train)")
    comparing.add_argument("--out", required=True, help="output folder (new or empty, or --overwrite)")
    comparing.add_argument("--overwrite", action="store_true", help="clear the output folder first")
    comparing.set_defaults(run=_compare)

    pushing = commands.add_parser("push", help="upload a run's final/ (weights, tokenizer, model card) to the hub")
    pushing.add_argument("folder", help="a run's final/ folder")
    pushing.add_argument("repo_id", help="the hub repository, e.g. you/my-dpo-model (created if missing)")
    pushing.add_argument("--private", action="store_true")
    pushing.set_defaults(run=_push)


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
    _add_evaluate_commands(commands)

    _add_report_commands(commands)

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
