"""On-policy rounds: sample from the policy, score with a reward, build the round's data, train on it through the
one loop — and again, from the weights the round ended with.

Per round r (`OnlineConfig` has every setting):

1. the round's prompts, K completions each, sampled from the policy as the round starts (a mode registered
   `from_initial`, such as best-of-N distillation: from the initial model, whose best-of-N is the target), token
   ids kept as sampled;
2. rewards (a sample whose reward raises or is not finite is excluded and counted), and every sample's per-token
   log-probs under the sampling policy and the initial model (the engine's, as training scores them): the
   round's sampled KL to the initial model and entropy;
3. the mode's training data, from the builder registered under its name (`alignlab.data.round_data`), in the
   first of the formats it feeds that the objective reads;
4. training on them (`alignlab.online.trainers`): by default the steps of one training run that lasts all rounds
   (``online.optimizer: persistent``: weights in memory, optimizer moments and schedule carried on), or a
   training run of its own per round (``per_round``: a fresh optimizer and schedule each round);
5. on held-out prompts (``online.eval_prompts``): mean reward and sampled KL to the initial model.

Run folder: ``config.yaml``; ``online.jsonl`` (a line per round); ``rounds/round-NNN/`` with ``samples.jsonl``
(written once sampled and scored, read back by a resumed run), ``eval_samples.jsonl`` and ``round.json`` (written
when the round is done); ``train/`` (persistent: the one training run, its metrics and checkpoints) or
``rounds/round-NNN/run/`` (per round: each round's training run); ``final/`` (the last round's weights). A kill
during sampling loses that round's samples; a kill during training resumes from the newest checkpoint,
bit-identical to an uninterrupted run.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from pathlib import Path

import torch
import yaml

from alignlab import decode, objectives, rewards
from alignlab.config import ONLINE_MODES, RunConfig, objective_terms
from alignlab.data.formats import Text
from alignlab.data.prompts import PromptsConfig, read_prompts
from alignlab.data.round_data import Group, RoundCounts, RoundInputs
from alignlab.data.tokenize import TokenizedSFT, truncate
from alignlab.distributed import join_process_group, process_rank, shared_work, wait_for_everyone
from alignlab.errors import AlignlabError, ConfigError
from alignlab.files import write_text_atomic
from alignlab.models.exactness import layout_note
from alignlab.models.loading import load_model, load_tokenizer
from alignlab.models.scoring import evaluation_mode
from alignlab.online.trainers import TRAINERS
from alignlab.report.html import write_report_safely
from alignlab.run_folder import RunFolder
from alignlab.train.reference import compute_reference_logps
from alignlab.train.setup import check_resumed_config
from alignlab.train.sharding import deepspeed_requested, fsdp_requested
from alignlab.train.state import TrainResult

EVAL_SEED_OFFSET = 999_983


def block_seed(seed: int, block: int) -> int:
    """The sampling seed of block `block` of a round's prompts (`online.sample_batch_size` prompts each): the round's
    seed for the first, one derived from (seed, block) for the others. Every block is drawn on its own, so the
    samples are the same whichever process draws them, on one process or several."""
    if block == 0:
        return seed
    return int.from_bytes(hashlib.sha256(f"{seed}/{block}".encode()).digest()[:8], "big") >> 1


class RewardFailedError(AlignlabError):
    """The reward failed on every sample of a round: nothing to train on."""


def round_prompts(prompts: list[Text], per_round: int | None, round_index: int) -> list[Text]:
    """Round `round_index`'s (1-based) prompts: all of them, or the next `per_round` in turn (wrapping around)."""
    if per_round is None:
        return list(prompts)
    start = (round_index - 1) * per_round
    return [prompts[(start + i) % len(prompts)] for i in range(per_round)]


def safe_rewards(reward, prompts: list[Text], completions: list[str]) -> tuple[list[float], str | None]:
    """One reward per completion; NaN where the reward raised or gave a non-finite value (scored one at a time
    after a batch fails, to find which), with the first error's text."""
    first_error = None
    try:
        scores = [float(x) for x in torch.as_tensor(reward.score(prompts, completions)).flatten().tolist()]
        if len(scores) != len(completions):
            raise ValueError(f"the reward gave {len(scores)} scores for {len(completions)} completions")
    except Exception as error:
        first_error = f"{type(error).__name__}: {error}"
        scores = []
        for prompt, completion in zip(prompts, completions, strict=True):
            try:
                value = torch.as_tensor(reward.score([prompt], [completion])).flatten()
                if value.numel() != 1:
                    raise ValueError(f"the reward gave {value.numel()} values for one completion")
                scores.append(float(value[0]))
            except Exception as single:
                scores.append(math.nan)
                first_error = first_error or f"{type(single).__name__}: {single}"
    if first_error is None and not all(math.isfinite(s) for s in scores):
        first_error = "non-finite reward"
    return [s if math.isfinite(s) else math.nan for s in scores], first_error


def token_logps(model, examples: list[TokenizedSFT], pad_id: int, batch_size: int, options) -> list[torch.Tensor]:
    """Per-token log-probs of each example's completion under `model`, scored the training engine's way."""
    device = next(model.parameters()).device
    scored = compute_reference_logps(model, examples, pad_id, batch_size, device, False, options)
    values, offsets = scored.values[0], scored.offsets[0]
    return [values[offsets[i]: offsets[i + 1]] for i in range(len(examples))]


def sample_stats(reward_values: list[float], old: list[torch.Tensor], ref: list[torch.Tensor]) -> dict:
    """Mean/max/min reward of the usable samples, sampled KL(π_old ‖ π_ref) (mean of Σ_t ℓ_old − ℓ_ref over samples),
    per-token entropy estimate (mean of −ℓ_old over sampled tokens), mean completion length."""
    usable = [r for r in reward_values if math.isfinite(r)]
    tokens = sum(len(o) for o in old)
    return {
        "reward_mean": sum(usable) / len(usable) if usable else math.nan,
        "reward_max": max(usable) if usable else math.nan,
        "reward_min": min(usable) if usable else math.nan,
        "kl": sum(float((o - r).sum()) for o, r in zip(old, ref, strict=True)) / max(1, len(old)),
        "entropy_per_token": -sum(float(o.sum()) for o in old) / max(1, tokens),
        "completion_tokens": tokens / max(1, len(old)),
    }


class OnlineRun:
    """The state of an online run between rounds: settings, prompts, reward, tokenizer, the initial model."""

    def __init__(self, config: RunConfig, log) -> None:
        online = config.online
        self.config, self.online, self.say = config, online, log
        self.reward = rewards.from_config(online.reward)
        self.prompts = read_prompts(PromptsConfig(online.prompts, online.prompt_field))
        self.eval_prompts = (read_prompts(PromptsConfig(online.eval_prompts, online.prompt_field))
                             if online.eval_prompts else [])
        self.tokenizer = load_tokenizer(config.model.path, config.model.trust_remote_code)
        self.pad_id = self.tokenizer.pad_token_id
        self.initial = self.load(config.model.path)
        self.initial.requires_grad_(False)
        note = layout_note(self.initial)  # a model with non-finite log-probs is refused here, before any sampling
        if note:
            log(note)
        self.folder = RunFolder(config.out_dir, writer=self.main)

    @property
    def main(self) -> bool:
        """Whether this is the process that writes the run's files (the only one outside a process group)."""
        return process_rank()[0] == 0

    @property
    def device(self) -> str:
        if not torch.cuda.is_available():
            return "cpu"
        rank, world = process_rank()
        return f"cuda:{int(os.environ.get('LOCAL_RANK', rank))}" if world > 1 else "cuda"

    def write(self, path: Path, text: str) -> None:
        """`text` into `path` (whole or not at all), by the main process only."""
        if self.main:
            path.parent.mkdir(parents=True, exist_ok=True)
            write_text_atomic(path, text)

    def load(self, path: str):
        dtype = "float32" if self.config.model.dtype == "auto" else self.config.model.dtype
        return load_model(path, dtype, self.config.model.trust_remote_code, self.device)

    def round_dir(self, index: int) -> Path:
        return self.folder.file("rounds") / f"round-{index:03d}"

    def indented(self, message: str) -> None:
        """A line of a round's training run, indented under the round's own lines."""
        self.say(f"   {message}")

    def seed(self, index: int) -> int:
        return self.config.train.seed * 1_000_003 + index

    # 1-2: sample and score ------------------------------------------------------------------------------------

    def draw(self, model, prompts: list[Text], k: int, seed: int) -> tuple[list[Group], list[str], dict]:
        """K samples per prompt from `model`, truncated like training data and scored: (groups, completions,
        facts: reward failures, truncations, first reward error). The prompts go in blocks of
        `online.sample_batch_size`, each drawn with its own seed (`block_seed`) and shared between the processes
        (`shared_work`): every process gets every block's samples."""
        size = self.online.sample_batch_size
        blocks = [prompts[i: i + size] for i in range(0, len(prompts), size)]
        drawn = shared_work(list(range(len(blocks))), lambda mine: [
            self.draw_block(model, blocks[b], k, block_seed(seed, b)) for b in mine])
        groups = [g for block_groups, _, _ in drawn for g in block_groups]
        completions = [c for _, block_completions, _ in drawn for c in block_completions]
        facts = {key: sum(f[key] for _, _, f in drawn)
                 for key in ("reward_failures", "truncated", "prompts_cut_for_context")}
        facts["first_reward_error"] = next((f["first_reward_error"] for *_, f in drawn if f["first_reward_error"]),
                                           None)
        return groups, completions, facts

    def draw_block(self, model, prompts: list[Text], k: int, seed: int) -> tuple[list[Group], list[str], dict]:
        """`draw` of one block of prompts, sampled with `seed`."""
        online, data = self.online, self.config.data
        samples = decode.get("sample")(model, self.tokenizer, prompts, n=k, max_new_tokens=online.max_new_tokens,
                                       temperature=online.temperature, top_k=online.top_k, top_p=online.top_p,
                                       batch_size=online.sample_batch_size, seed=seed,
                                       max_prompt_tokens=data.max_prompt_length,
                                       progress=self.config.train.progress, engine=online.engine)
        scores, error = safe_rewards(self.reward, samples.prompts, samples.completions)
        groups, truncated = [], 0
        eos = self.tokenizer.eos_token_id
        drawn_with = samples.extras["token_logps"]
        for p in range(len(prompts)):
            rows = range(p * k, (p + 1) * k)
            examples, logps = [], []
            for i in rows:
                prompt, (completion,), prompt_cut, completion_cut = truncate(
                    samples.prompt_ids[i], (samples.completion_ids[i] or [eos],), data.max_length,
                    data.max_prompt_length)
                truncated += prompt_cut or completion_cut
                examples.append(TokenizedSFT(prompt, completion))
                logps.append(drawn_with[i][: len(completion)])
            groups.append(Group(examples, [scores[i] for i in rows], logps))
        facts = {"reward_failures": sum(not math.isfinite(s) for s in scores), "truncated": truncated,
                 "prompts_cut_for_context": samples.prompts_truncated, "first_reward_error": error}
        return groups, samples.completions, facts

    def shared_logps(self, policy, examples: list[TokenizedSFT], initial_weights: bool = False,
                     drawn_with: list[list[float]] | None = None) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """`scored_logps`, the examples shared between the processes (every process gets all of them). Whether the
        sampler's log-probs stand for π_old is decided once, for the whole round."""
        if drawn_with is not None and any(len(d) != len(e.completion) for d, e in zip(drawn_with, examples,
                                                                                      strict=True)):
            drawn_with = None

        def mine(indices: list[int]) -> list[tuple[torch.Tensor, torch.Tensor]]:
            old, ref = self.scored_logps(policy, [examples[i] for i in indices], initial_weights,
                                         None if drawn_with is None else [drawn_with[i] for i in indices])
            # copies: a slice of one tensor would carry the whole tensor between the processes
            return [(o.clone(), r.clone()) for o, r in zip(old, ref, strict=True)]

        pairs = shared_work(list(range(len(examples))), mine)
        return [old for old, _ in pairs], [ref for _, ref in pairs]

    def scored_logps(self, policy, examples: list[TokenizedSFT], initial_weights: bool = False,
                     drawn_with: list[list[float]] | None = None) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Per-token log-probs of the samples under the sampling policy and under the initial model (the same
        numbers when the policy is the initial model or holds its weights, `initial_weights`). With `drawn_with`
        (``online.old_logps: sampler``; the sampler's log-probs, one list per sample) the sampling policy's are
        those, and only the initial model runs."""
        batch = self.config.train.batch_size * 2
        if drawn_with is not None and all(len(d) == len(e.completion) for d, e in zip(drawn_with, examples,
                                                                                        strict=True)):
            old = [torch.tensor(d, dtype=torch.float32) for d in drawn_with]
            return old, token_logps(self.initial, examples, self.pad_id, batch, self.config.scoring)
        old = token_logps(policy, examples, self.pad_id, batch, self.config.scoring)
        same = initial_weights or policy is self.initial
        ref = old if same else token_logps(self.initial, examples, self.pad_id, batch, self.config.scoring)
        return old, ref

    # 3: the round's data -------------------------------------------------------------------------------------

    def build(self, groups: list[Group], old: list[torch.Tensor], ref: list[torch.Tensor], objective_formats,
              index: int, counts: RoundCounts) -> list:
        """Round `index`'s training data, as the mode's registered builder makes it for the objective."""
        mode = ONLINE_MODES.get(self.online.mode)
        inputs = RoundInputs(groups, old, ref, mode.data_format(objective_formats), self.seed(index), counts)
        return mode.build(inputs, self.online)

    # 5: held-out evaluation ----------------------------------------------------------------------------------

    def evaluate(self, model, where: Path) -> dict | None:
        """Mean reward and sampled KL to the initial model of `model` on the held-out prompts (the same seed every
        round); samples written to `where`."""
        if not self.eval_prompts:
            return None
        groups, completions, facts = self.draw(model, self.eval_prompts, self.online.eval_samples,
                                               self.config.train.seed * 1_000_003 + EVAL_SEED_OFFSET)
        examples = [e for g in groups for e in g.examples]
        old, ref = self.shared_logps(model, examples)
        values = [r for g in groups for r in g.rewards]
        rows = [{"prompt": prompt, "completion": c, "reward": None if math.isnan(r) else round(r, 5)}
                for prompt, c, r in zip([p for p in self.eval_prompts for _ in range(self.online.eval_samples)],
                                        completions, values, strict=True)]
        self.write(where, "".join(json.dumps(row) + "\n" for row in rows))
        return {**sample_stats(values, old, ref), "reward_failures": facts["reward_failures"]}


def _samples_rows(groups: list[Group], prompts: list[Text], completions: list[str]) -> list[dict]:
    k = len(groups[0].examples) if groups else 0
    rows = []
    for g, group in enumerate(groups):
        for i, (example, reward) in enumerate(zip(group.examples, group.rewards, strict=True)):
            rows.append({"group": g, "prompt": prompts[g], "completion": completions[g * k + i],
                         "reward": None if math.isnan(reward) else reward, "prompt_ids": example.prompt,
                         "completion_ids": example.completion, "sampler_logps": group.sampler_logps[i]})
    return rows


def _groups_from_rows(rows: list[dict]) -> list[Group]:
    groups: dict[int, Group] = {}
    for row in rows:
        group = groups.setdefault(row["group"], Group([], [], []))
        group.examples.append(TokenizedSFT(row["prompt_ids"], row["completion_ids"]))
        group.rewards.append(math.nan if row["reward"] is None else float(row["reward"]))
        group.sampler_logps.append(row["sampler_logps"])
    return [groups[g] for g in sorted(groups)]


def _round_samples(state: OnlineRun, index: int, sampler, where: Path) -> tuple[list[Group], dict]:
    """Round `index`'s scored samples and facts: read back when an earlier attempt wrote them, else drawn from
    `sampler`, scored and written (not when the reward failed on every sample, so a resumed run tries again)."""
    online, say = state.online, state.say
    samples_file, facts_file = where / "samples.jsonl", where / "samples_facts.json"
    if samples_file.is_file() and facts_file.is_file():
        rows = [json.loads(line) for line in samples_file.read_text().splitlines()]
        say(f"round {index}: {len(rows)} samples read back from {samples_file}")
        return _groups_from_rows(rows), json.loads(facts_file.read_text())
    prompts = round_prompts(state.prompts, online.prompts_per_round, index)
    say(f"round {index}: sampling {online.samples_per_prompt} completions for {len(prompts)} prompts")
    groups, completions, facts = state.draw(sampler, prompts, online.samples_per_prompt, state.seed(index))
    if facts["reward_failures"]:
        say(f"round {index}: the reward failed on {facts['reward_failures']} samples, which are left out "
            f"({facts['first_reward_error']})")
    rows = _samples_rows(groups, prompts, completions)
    if not any(g.usable() for g in groups):
        raise RewardFailedError(f"round {index}: the reward failed on all {len(rows)} samples "
                                f"({facts['first_reward_error']})")
    state.write(facts_file, json.dumps(facts) + "\n")  # first: samples.jsonl marks both as written
    state.write(samples_file, "".join(json.dumps(row) + "\n" for row in rows))
    return groups, facts


def _round_data(state: OnlineRun, index: int, sampler, objective_formats) -> tuple[list, dict, dict]:
    """Round `index`'s samples (drawn from `sampler`, or read back), their log-probs under the sampling policy and
    the initial model, and the training data the mode builds: (examples, the round's record so far, seconds)."""
    online, say = state.online, state.say
    where = state.round_dir(index)
    started = time.time()
    groups, facts = _round_samples(state, index, sampler, where)
    sampled = time.time()
    examples = [e for g in groups for e in g.examples]
    drawn_with = [d for g in groups for d in g.sampler_logps] if online.old_logps == "sampler" else None
    old, ref = state.shared_logps(sampler, examples, initial_weights=index == 1, drawn_with=drawn_with)
    counts = RoundCounts(groups=len(groups), samples=len(examples),
                         reward_failures=sum(len(g.examples) - len(g.usable()) for g in groups))
    data = state.build(groups, old, ref, objective_formats, index, counts)
    skipped = {k: v for k, v in counts.as_dict().items() if k in ("single_groups", "tied_groups") and v}
    if skipped:
        listed = ", ".join(f"{v} {k.replace('_', ' ')}" for k, v in skipped.items())
        say(f"round {index}: {listed} (no pair / zero advantage; counted in online.jsonl)")
    if not data or all(getattr(e, "advantage", 1.0) == 0 for e in data):
        raise RewardFailedError(f"round {index}: no training signal from {len(examples)} samples (every group tied or "
                                f"had one usable sample: {counts.as_dict()}); raise samples_per_prompt or lower "
                                "online.min_gap")
    record = {"round": index, "samples": sample_stats([r for g in groups for r in g.rewards], old, ref),
              "counts": counts.as_dict(), **{k: v for k, v in facts.items() if k != "reward_failures"}}
    seconds = {"sample_and_score": round(sampled - started, 2), "logps_and_data": round(time.time() - sampled, 2)}
    return data, record, seconds


def _one_round(state: OnlineRun, index: int, objective_formats, trainer) -> tuple[dict | None, object]:
    """Round `index`: (its record, the trained model), or (None, None) when a signal stopped its training."""
    online = state.online
    policy = trainer.policy(index)
    sampler = state.initial if ONLINE_MODES.get(online.mode).from_initial else policy
    with evaluation_mode(policy):
        data, record, seconds = _round_data(state, index, sampler, objective_formats)
    scored = time.time()
    reference_model = state.initial if online.reference == "initial" else None
    trained = trainer.train(index, data, policy, reference_model)
    if trained is None:
        return None, None
    done = time.time()
    record = {"round": index, "samples": record.pop("samples"), "counts": record.pop("counts"),
              "steps": trained.steps, "train": {k: v for k, v in trained.last_metrics.items()
                                                if isinstance(v, (int, float)) and k not in ("elapsed_s", "round")},
              **{k: v for k, v in record.items() if k != "round"}}
    with evaluation_mode(trained.model):
        record["eval"] = state.evaluate(trained.model, state.round_dir(index) / "eval_samples.jsonl")
    record["seconds"] = {**seconds, "train": round(done - scored, 2), "eval": round(time.time() - done, 2)}
    return record, trained.model


def _write_log(state: OnlineRun, baseline: dict | None) -> list[dict]:
    """``online.jsonl`` from the finished rounds' ``round.json`` (the main process; the others get no records)."""
    if not state.main:
        return []
    records = [json.loads(p.read_text()) for p in sorted(state.folder.file("rounds").glob("round-*/round.json"))]
    lines = ([{"round": 0, "eval": baseline}] if baseline else []) + records
    state.write(state.folder.file("online.jsonl"), "".join(json.dumps(r) + "\n" for r in lines))
    return records


def format_rounds(records: list[dict], baseline: dict | None) -> str:
    lines = [f"{'round':>5} {'sample reward':>13} {'sample KL':>9} {'entropy':>8} {'examples':>8} "
             f"{'eval reward':>11} {'eval KL':>8}"]
    if baseline:
        lines.append(f"{0:>5} {'':>13} {'':>9} {'':>8} {'':>8} {baseline['reward_mean']:>11.3f} "
                     f"{baseline['kl']:>8.3f}")
    for r in records:
        s, e = r["samples"], r.get("eval") or {}
        lines.append(f"{r['round']:>5} {s['reward_mean']:>13.3f} {s['kl']:>9.3f} {s['entropy_per_token']:>8.3f} "
                     f"{r['counts']['examples']:>8} {e.get('reward_mean', math.nan):>11.3f} "
                     f"{e.get('kl', math.nan):>8.3f}")
    return "\n".join(lines)


def _baseline(state: OnlineRun) -> dict | None:
    """The initial model on the held-out prompts (round 0), evaluated once and kept for resumed runs."""
    if not state.eval_prompts:
        return None
    baseline_file = state.round_dir(0) / "eval.json"
    if baseline_file.is_file():
        return json.loads(baseline_file.read_text())
    state.say(f"round 0: the initial model on {len(state.eval_prompts)} held-out prompts")
    baseline = state.evaluate(state.initial, baseline_file.parent / "eval_samples.jsonl")
    state.write(baseline_file, json.dumps(baseline, indent=2) + "\n")
    return baseline


def _finish_online(state: OnlineRun, records: list[dict], baseline: dict | None, model, trainer) -> TrainResult:
    """``final/`` (as the rounds' trainer writes it), a summary, the per-round table."""
    config, folder = state.config, state.folder
    final = folder.file("final")
    model = trainer.finish(model)
    if state.main:
        state.write(folder.file("summary.yaml"), yaml.safe_dump(
            {"mode": config.online.mode, "rounds": len(records), "baseline": baseline,
             "last_round": records[-1] if records else None}, sort_keys=False))
        state.say(format_rounds(records, baseline))
        state.say(f"done: {len(records)} rounds of {config.online.mode}; weights in {final}, per-round log in "
                  f"{folder.file('online.jsonl')}{write_report_safely(folder.path, state.say)}")
    return TrainResult(folder.path, final, model, state.tokenizer, records[-1] if records else {})


def run_online(config: RunConfig, resume: bool = False, log=print, overwrite: bool = False) -> TrainResult:
    """Run `config.online.rounds` rounds of sample → score → train (module docstring); `resume` continues the run in
    `config.out_dir` (rounds already done are kept, a round's training continues from its checkpoint).

    Under `torchrun`/`accelerate launch` every process runs the rounds: each samples, scores and computes the
    log-probs of its share of the round's prompts (whole groups, in blocks of `online.sample_batch_size`), every
    process gets the whole round's samples (so a group's advantages see all its samples), the steps are
    distributed as any training run's (DDP: each micro-batch split between the processes), and only the main
    process writes files or speaks. The samples do not depend on the number of processes (`block_seed`)."""
    if config.online is None:
        raise ConfigError("run_online needs a config with an online section")
    if fsdp_requested() or deepspeed_requested():
        engine = "FSDP" if fsdp_requested() else "DEEPSPEED"
        raise ConfigError(f"online rounds sample from the policy's whole weights, which {engine} shards: run them "
                          "with DDP (torchrun, or accelerate launch --multi_gpu)")
    join_process_group()
    main = process_rank()[0] == 0
    log = log if main else (lambda *_: None)
    folder = RunFolder(config.out_dir, writer=main)
    folder.check_usable(resume, overwrite)
    if resume:
        check_resumed_config(config, folder.path)
    objective = objectives.Objective(objective_terms(config))
    state = OnlineRun(config, log)  # prompts, reward, tokenizer, initial model: checked before anything is written
    wait_for_everyone()  # every process has checked the folder before the main process makes it
    folder.create(overwrite)
    wait_for_everyone()
    if process_rank()[1] > 1:
        log(f"online rounds on {process_rank()[1]} processes: sampling, rewards and log-probs shared, steps with DDP")
    trainer = TRAINERS[config.online.optimizer](state)
    try:
        folder.write_config(config)
        baseline = _baseline(state)
        model = None
        for index in range(1, config.online.rounds + 1):
            done = state.round_dir(index) / "round.json"
            if done.is_file():
                continue
            record, model = _one_round(state, index, objective.data_formats, trainer)
            if record is None:
                return TrainResult(folder.path, folder.file("final"), state.initial, state.tokenizer, {},
                                   interrupted=True)
            state.write(done, json.dumps(record, indent=2) + "\n")
            _write_log(state, baseline)  # online.jsonl grows as rounds finish
            evaluation = record["eval"]
            log(f"round {index} done: sample reward {record['samples']['reward_mean']:.3f}, sampled KL "
                f"{record['samples']['kl']:.3f}" + (f"; held-out reward {evaluation['reward_mean']:.3f}, KL "
                                                     f"{evaluation['kl']:.3f}" if evaluation else ""))
        return _finish_online(state, _write_log(state, baseline), baseline, model, trainer)
    finally:
        trainer.close()
        folder.unlock()
