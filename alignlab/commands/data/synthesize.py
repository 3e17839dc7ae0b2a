"""`alignlab data synthesize PROMPTS --method p_aligner|anyprefer --out DIR`: preference data made from a prompt
file, one prompt at a time, written as it goes (a killed run continues with ``--resume``).

* ``p_aligner`` (Song et al., 2025): a Monte-Carlo tree search over principle-guided rewrites of each instruction
  (`alignlab.data.p_aligner`). The policy (--model) samples --responses answers to a rewrite; the reward (--reward, a
  registered reward, VADER sentiment by default) scores them against the *original* instruction. ``pairs.jsonl``
  holds original → (best rewrite, worst rewrite) and ``sft.jsonl`` original → best rewrite, what P-Aligner trains
  its rewriter on. The offline rewriter puts a principle's text before the instruction; a real P-Aligner needs an
  instruction-following rewriter LLM (library: any `Rewriter` callable).
* ``anyprefer`` (Zhou et al., ICLR 2025): the target (--model) samples --candidates answers under a target prompt
  (a line of --target-prompts; here the answer's first words, kept in the answer, so that a pair trains on what was
  sampled after its prompt — the paper's target prompt is a system prompt, which the embedded model never saw), a
  judge scores them with its tools' knowledge (the toy's: the reward minus --penalty per genre the answer
  contradicts, `genre_facts` the tool), the best and worst form a pair whose judge margin must reach --threshold, or
  the prompts change and the round is played again (`alignlab.data.anyprefer`). ``pairs.jsonl`` holds the accepted
  pairs (``--keep-unaccepted``: all). The toy judge reads a numeric judge prompt as its penalty, so margins of rounds
  judged under different prompts are on different scales (the best round of an unaccepted prompt compares them).

``rows.jsonl`` (one row per prompt, with every reward and the round history) grows as prompts finish; at the end
``result.json``, ``synthesize.png`` and ``report.html`` are written from it.
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import math
import os
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path

import numpy as np
import yaml
from tqdm import tqdm

from alignlab import rewards
from alignlab.commands.options import add_model_run_options, frozen_model, positive, settings_of
from alignlab.data.anyprefer import (
    DEFAULT_CANDIDATES,
    DEFAULT_MAX_ROUNDS,
    anyprefer_pair,
    genre_facts,
    judge_margin,
    judge_penalty,
    lexicon_judge,
    pair_record,
)
from alignlab.data.formats import RecordChecker
from alignlab.data.loading import read_records
from alignlab.data.p_aligner import (
    DEFAULT_C,
    DEFAULT_ITERATIONS,
    DEFAULT_RESPONSES,
    preference_record,
    prefix_rewriter,
    principles_for,
    read_principles,
    search,
)
from alignlab.decode.sampling import generate
from alignlab.errors import ConfigError
from alignlab.report.html import write_report_safely
from alignlab.report.plots import bar_chart
from alignlab.run_folder import RunFolder

METHODS = ("p_aligner", "anyprefer")
ROWS, PAIRS, SFT = "rows.jsonl", "pairs.jsonl", "sft.jsonl"
KEPT_ON_RESUME = ("method", "model", "seed", "max_new_tokens", "reward", "groups", "iterations", "c", "responses",
                  "judge_prompts", "candidates", "max_rounds", "threshold", "penalty", "chat", "inputs")
"""The settings a resumed run must share with the rows already written (``inputs``: the sha256 of every file read,
so that an edited prompt, principle or target-prompt file is noticed whatever path names it)."""
INPUT_FILES = ("data", "principles", "target_prompts", "reward")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("data", help="the prompts: records with a 'prompt' string (.jsonl, .json, .csv, .parquet, "
                        "a saved dataset or a hub id)")
    parser.add_argument("--method", choices=METHODS, required=True)
    parser.add_argument("--reward", default="sentiment", help="p_aligner: the reward of the policy's answers; "
                        "anyprefer: the judge's score before the contradiction penalty (a registered reward or a YAML "
                        "entry; default sentiment, VADER)")
    parser.add_argument("--max-new-tokens", type=int, default=24, help="length of every sampled answer")
    parser.add_argument("--chat", action=argparse.BooleanOptionalAction, default=None, help="render prompts with the "
                        "model's chat template (default: p_aligner no, the policy continues the instruction; "
                        "anyprefer yes when the model has a template)")
    parser.add_argument("--principles", help="p_aligner: the rule file, {group: {name: text}} or the official "
                        "{group: [{name, content}]} (examples/data/principles.yaml for the offline toy)")
    parser.add_argument("--groups", nargs="+", help="p_aligner: only these groups' principles")
    parser.add_argument("--iterations", type=int, default=DEFAULT_ITERATIONS, help="p_aligner: MCTS iterations per "
                        f"prompt (default {DEFAULT_ITERATIONS})")
    parser.add_argument("--c", type=float, default=DEFAULT_C, help=f"p_aligner: UCB's exploration weight "
                        f"(default {DEFAULT_C})")
    parser.add_argument("--responses", type=int, default=DEFAULT_RESPONSES, help="p_aligner: answers sampled per "
                        f"node (default {DEFAULT_RESPONSES})")
    parser.add_argument("--target-prompts", help="anyprefer: a text file, one target prompt per line (the answer's "
                        "first words); default: no prompt")
    parser.add_argument("--judge-prompts", nargs="+", default=["0.5"], help="anyprefer: the judge's prompts; the toy "
                        "judge reads a number as its contradiction penalty (default 0.5)")
    parser.add_argument("--penalty", type=float, default=0.5, help="anyprefer: the judge's penalty per contradicted "
                        "genre when a judge prompt is not a number")
    parser.add_argument("--candidates", type=int, default=DEFAULT_CANDIDATES)
    parser.add_argument("--max-rounds", type=int, default=DEFAULT_MAX_ROUNDS)
    parser.add_argument("--threshold", type=float, default=1.0, help="anyprefer: the judge margin a pair must reach")
    parser.add_argument("--keep-unaccepted", action="store_true", help="anyprefer: write pairs that never reached "
                        "--threshold to pairs.jsonl too (counted either way)")
    parser.add_argument("--resume", action="store_true", help="continue the run in --out with the prompts still to do")
    add_model_run_options(parser)


def _check(args: argparse.Namespace) -> None:
    """Every option, before anything is read or written."""
    positive(args, "max_new_tokens", "iterations", "responses", "candidates", "max_rounds")
    for name in ("c", "penalty", "threshold"):
        if not math.isfinite(getattr(args, name)):
            raise ConfigError(f"--{name} must be a finite number, got {getattr(args, name)}")
    if args.c < 0:
        raise ConfigError(f"--c must be ≥ 0, got {args.c}")
    for prompt in args.judge_prompts:
        judge_penalty(prompt, args.penalty)
    if args.candidates < 2:
        raise ConfigError(f"--candidates must be at least 2 (a pair needs two answers), got {args.candidates}")
    if args.method == "p_aligner" and not args.principles:
        raise ConfigError("--method p_aligner needs --principles FILE (examples/data/principles.yaml for the toy)")
    for name in ("principles", "target_prompts"):
        if getattr(args, name) and not Path(getattr(args, name)).is_file():
            raise ConfigError(f"--{name.replace('_', '-')}: {getattr(args, name)}: file not found")
    rewards.check_entry(rewards.entry_from_argument(args.reward), "--reward")


def read_prompts(path: str) -> list[tuple[str, str]]:
    """(location, prompt) of every record; a record without a non-empty 'prompt' string stops with its line."""
    prompts = []
    for location, record in read_records(path):
        check = RecordChecker(str(path), location)
        prompt = check.text(check.required(check.record(record, "prompt"), "prompt"), "prompt", allow_empty=False)
        if not isinstance(prompt, str):
            raise check.error("expected a string (the instruction to rewrite or answer), got chat messages",
                              field="prompt")
        prompts.append((location, prompt))
    if not prompts:
        raise ConfigError(f"{path} holds no prompts")
    return prompts


def read_target_prompts(path: str | None) -> list[str]:
    """The lines of --target-prompts (blank lines skipped); without a file, one empty prompt."""
    if path is None:
        return [""]
    lines = [line.strip() for line in Path(path).read_text().splitlines() if line.strip()]
    if not lines:
        raise ConfigError(f"--target-prompts {path} holds no prompt")
    return lines


Sampler = Callable[[str, str, int, int], list[str]]
"""(instruction, first words of the answer, n, seed) → n sampled answers, each starting with the given words."""


def uses_chat(args: argparse.Namespace, tokenizer) -> bool:
    """--chat, where the model has a chat template to render it."""
    return bool(args.chat) and getattr(tokenizer, "chat_template", None) is not None


def training_prompt(instruction: str, chat: bool) -> str | list[dict]:
    """What an answer was sampled after, as a training record's prompt: the user turn, or the text continued."""
    return [{"role": "user", "content": instruction}] if chat else instruction


def sampler(model, tokenizer, args: argparse.Namespace) -> Sampler:
    """Sampling from --model at temperature 1 after `training_prompt(instruction)` (rendered by the chat template
    with the assistant's turn opened, or as plain text). Given first words (Anyprefer's target prompt) open the
    answer and are part of it: the answer is the words, a space, and what the model writes after them, so a pair
    trains on exactly what was sampled after the record's prompt."""
    chat = uses_chat(args, tokenizer)

    def sample(instruction: str, start: str, n: int, seed: int) -> list[str]:
        text = (tokenizer.apply_chat_template(training_prompt(instruction, True), tokenize=False,
                                              add_generation_prompt=True) if chat else instruction)
        opening = f" {start}" if start and not chat else start
        completions = generate(model, tokenizer, [text + opening], n=n, max_new_tokens=args.max_new_tokens,
                               seed=seed, progress=False).completions
        return [opening + completion for completion in completions]
    return sample


def stream_seed(*parts: int) -> int:
    """A sampling seed for one call, distinct for every (seed, prompt index, call) (numpy's SeedSequence hash)."""
    return int(np.random.SeedSequence([abs(part) for part in parts]).generate_state(1)[0])


def p_aligner_row(args: argparse.Namespace, sample: Sampler, reward, principles) -> Callable[[int, str], dict]:
    """The search of one prompt: every node simulated by --responses answers, their mean reward its local reward."""
    def synthesize(index: int, original: str) -> dict:
        calls = itertools.count()

        def simulate(instruction: str, source: str) -> float:
            answers = sample(instruction, "", args.responses, stream_seed(args.seed, index, next(calls)))
            return float(reward.score([source] * len(answers), answers).mean())
        root = search(original, principles, prefix_rewriter, simulate, args.iterations, args.c,
                      stream_seed(args.seed, index))
        record = preference_record(root)
        return {**record, "accepted": record["chosen_reward"] > record["rejected_reward"]}
    return synthesize


def anyprefer_row(args: argparse.Namespace, sample: Sampler, reward, target_prompts: list[str]
                  ) -> Callable[[int, str], dict]:
    """One prompt's Anyprefer loop with the toy judge (reward − penalty · contradicted genres) and margin R."""
    def sentiment(texts: list[str]) -> list[float]:
        return reward.score([""] * len(texts), texts).tolist()
    judge = lexicon_judge(sentiment, args.penalty)

    def synthesize(index: int, instruction: str) -> dict:
        rounds = itertools.count()

        def candidates(start: str, x: str, n: int) -> list[str]:
            return sample(x, start, n, stream_seed(args.seed, index, next(rounds)))
        result = anyprefer_pair(instruction, target_prompts, args.judge_prompts, candidates, [genre_facts], judge,
                                judge_margin, args.threshold, args.candidates, args.max_rounds)
        return {**pair_record(result), "history": result.history}
    return synthesize


def done_rows(path: Path) -> int:
    """How many whole rows `path` holds, counted as a stream; a half-written last line (a killed run) is cut off in
    place (truncated, never rewritten: a kill during the cut loses nothing else)."""
    if not path.is_file():
        return 0
    rows, end = 0, 0
    with path.open("rb") as lines:
        for line in lines:
            if line.endswith(b"\n"):
                rows, end = rows + 1, end + len(line)
    if end != path.stat().st_size:
        os.truncate(path, end)
    return rows


def synthesize_rows(folder: RunFolder, prompts: list[tuple[str, str]], synthesize: Callable[[int, str], dict],
                    progress: bool) -> None:
    """Append one row per prompt not yet done to rows.jsonl, flushed as each finishes."""
    start = done_rows(folder.file(ROWS))
    with folder.file(ROWS).open("a") as rows:
        for index in tqdm(range(start, len(prompts)), desc="synthesizing", unit="prompt", initial=start,
                          total=len(prompts), disable=not progress):
            location, prompt = prompts[index]
            rows.write(json.dumps({"index": index, "location": location, **synthesize(index, prompt)}) + "\n")
            rows.flush()


def _rows(path: Path) -> Iterator[dict]:
    with path.open() as lines:
        for line in lines:
            yield json.loads(line)


def finish(folder: RunFolder, args: argparse.Namespace, chat: bool) -> dict:
    """pairs.jsonl (and sft.jsonl for p_aligner) from rows.jsonl, streamed, and the result's numbers. Every prompt
    is counted once: written as a pair, not accepted (below --threshold, or p_aligner's best and worst equally
    rewarded; written too with --keep-unaccepted), or without a preference (no pair, or one text twice)."""
    counts = {"prompts": 0, "pairs": 0, "accepted": 0, "unaccepted": 0, "no_preference": 0}
    sums = {"chosen": 0.0, "rejected": 0.0, "root": 0.0, "rounds": 0}
    with ExitStack() as files:
        pairs = files.enter_context(folder.file(PAIRS).open("w"))
        sft = files.enter_context(folder.file(SFT).open("w")) if args.method == "p_aligner" else None
        for row in _rows(folder.file(ROWS)):
            counts["prompts"] += 1
            if args.method == "p_aligner":
                sums["chosen"] += row["chosen_reward"]
                sums["rejected"] += row["rejected_reward"]
                sums["root"] += row["root_reward"]
                sft.write(json.dumps({"prompt": row["prompt"], "completion": row["chosen"]}) + "\n")
            else:
                sums["rounds"] += row["rounds"]
            if row["chosen"] is None or row["chosen"] == row["rejected"]:
                counts["no_preference"] += 1
                continue
            counts["accepted" if row["accepted"] else "unaccepted"] += 1
            if row["accepted"] or args.keep_unaccepted:
                counts["pairs"] += 1
                prompt = training_prompt(row["prompt"], chat) if args.method == "anyprefer" else row["prompt"]
                pairs.write(json.dumps({"prompt": prompt, "chosen": row["chosen"], "rejected": row["rejected"]}) + "\n")
    return _result(args, counts, sums)


def _result(args: argparse.Namespace, counts: dict, sums: dict) -> dict:
    n = max(1, counts["prompts"])
    result = {"method": args.method, **counts, "acceptance_rate": counts["accepted"] / n, "pairs_file": PAIRS}
    if args.method == "p_aligner":
        result.update(mean_reward_original=sums["root"] / n, mean_reward_chosen=sums["chosen"] / n,
                      mean_reward_rejected=sums["rejected"] / n, sft_file=SFT,
                      note="rewards are the search's own estimates (the best of many noisy nodes is optimistic); "
                           "sample the chosen rewrites afresh to measure them")
        bars = {"original": {"mean reward": result["mean_reward_original"]},
                "chosen rewrite": {"mean reward": result["mean_reward_chosen"]},
                "rejected rewrite": {"mean reward": result["mean_reward_rejected"]}}
    else:
        result["mean_rounds"] = sums["rounds"] / n
        bars = {"pairs": {"acceptance rate": result["acceptance_rate"]}}
    return {**result, "headline_numbers": bars}


def file_digests(args: argparse.Namespace) -> dict[str, str]:
    """The sha256 of every input file the options name (a reward given by name has none)."""
    return {name: hashlib.sha256(Path(getattr(args, name)).read_bytes()).hexdigest() for name in INPUT_FILES
            if getattr(args, name) and Path(getattr(args, name)).is_file()}


def _check_resumed(folder: RunFolder, settings: dict) -> None:
    saved = yaml.safe_load(folder.file("config.yaml").read_text()) if folder.file("config.yaml").is_file() else {}
    changed = [key for key in KEPT_ON_RESUME if saved.get(key) != settings.get(key)]
    if changed:
        raise ConfigError(f"--resume keeps the rows written earlier, and the saved config.yaml differs in "
                          f"{', '.join(changed)}: resume with the same settings, or --overwrite")


def run(args: argparse.Namespace) -> None:
    if args.chat is None:
        args.chat = args.method == "anyprefer"
    _check(args)
    prompts = read_prompts(args.data)
    principles = principles_for(read_principles(args.principles), args.groups) if args.principles else []
    target_prompts = read_target_prompts(args.target_prompts)
    folder = RunFolder(args.out)
    folder.check_usable(resume=args.resume, overwrite=args.overwrite)
    settings = {**settings_of(args), "inputs": file_digests(args)}
    if args.resume and folder.holds_results():
        _check_resumed(folder, settings)
    model, tokenizer = frozen_model(args)
    reward = rewards.from_config(rewards.entry_from_argument(args.reward))
    sample = sampler(model, tokenizer, args)
    synthesize = (p_aligner_row(args, sample, reward, principles) if args.method == "p_aligner"
                  else anyprefer_row(args, sample, reward, target_prompts))
    page: list[str] = []
    with folder.writing(args.overwrite, on_success=lambda path: page.append(write_report_safely(path))):
        folder.write_yaml("config.yaml", settings)
        synthesize_rows(folder, prompts, synthesize, not args.quiet)
        result = finish(folder, args, uses_chat(args, tokenizer))
        folder.write_json("result.json", result)
        bar_chart(folder.file("synthesize.png"), result["headline_numbers"], "mean",
                  f"data synthesize: {args.method}")
    print(f"{result['prompts']} prompts, {result['pairs']} pairs written ({result['accepted']} accepted, "
          f"{result['unaccepted']} not, {result['no_preference']} without a preference); "
          f"wrote {folder.file('result.json')}{''.join(page)}")
