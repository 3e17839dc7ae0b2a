"""LLM judges and their biases: position bias from both presentation orders, robustness to injected cues.

A judge J(q, first, second) ∈ {first, second, tie} is shown every preference pair twice, as (A, B) and as
(B, A), and again with a cue injected in favour of one response; what its verdicts say — consistency, primacy,
recency, accuracy, robustness per bias — is computed by the pure functions of `alignlab.evaluate.judge_bias`, whose
docstring gives the definitions (Zheng et al., 2023; "Assessing Judging Bias in Large Reasoning Models", 2025).

Two judges share one batched interface, ``judge(questions, firsts, seconds) -> verdicts``: `PromptedJudge`
reads a causal LM's next-token log-probs of " A" and " B" after a comparison prompt (one forward pass per
batch, no sampling), `RewardJudge` compares the scores of any alignlab reward. `evaluate_judge` runs either
over a preference file and writes ``result.json``, ``verdicts.jsonl`` and ``judges.png``.
"""

from __future__ import annotations

import math
import string
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch

from alignlab import rewards
from alignlab.data.formats import RecordChecker
from alignlab.data.loading import read_records
from alignlab.data.tokenize import encode_prompt
from alignlab.errors import ConfigError, DataError
from alignlab.evaluate.judge_bias import (
    CONSISTENT,
    FAVOUR,
    INJECTIONS,
    VERDICTS,
    Presentation,
    favoured_position,
    position_bias,
    preference_accuracy,
    robustness,
)
from alignlab.evaluate.rates import format_rate
from alignlab.models.loading import load_model, load_tokenizer
from alignlab.models.scoring import evaluation_mode, score_slots
from alignlab.report.html import write_report_safely
from alignlab.report.plots import pyplot, save_figure
from alignlab.run_folder import RunFolder

# --- judges ---------------------------------------------------------------------------------------------------


class Judge(Protocol):
    def judge(self, questions: list[str], firsts: list[str], seconds: list[str]) -> list[str]:
        """One verdict (first / second / tie) per presentation."""
        ...


def verdicts_from_margins(margins: torch.Tensor, tie_margin: float = 0.0) -> list[str]:
    """first where margin > tie_margin, second where margin < −tie_margin, tie otherwise (|margin| ≤ tie_margin);
    a margin is how much the judge prefers the first-shown response."""
    return ["first" if m > tie_margin else "second" if m < -tie_margin else "tie" for m in margins.tolist()]


DEFAULT_JUDGE_TEMPLATE = """You are comparing two responses to the same request. Decide which response answers \
the request better: more helpful, more accurate and clearer. The order of the responses does not matter.

Request:
{question}

Response A:
{first}

Response B:
{second}

Which response is better? Answer A or B.
Answer:"""

JUDGE_FIELDS = ("question", "first", "second")


def check_template(template: str, required: Sequence[str], allowed: Sequence[str] | None = None,
                   name: str = "template") -> None:
    """ConfigError unless `template` is a `str.format` template naming every field of `required` and no field
    outside `allowed` (default: `required`); literal braces are written doubled."""
    allowed = tuple(allowed or required)
    try:
        fields = {f for _, f, _, _ in string.Formatter().parse(template) if f is not None}
    except ValueError as error:
        raise ConfigError(f"{name}: not a format template ({error}); write literal braces as {{{{ and }}}}") from None
    unknown = sorted(fields - set(allowed))
    missing = [f for f in required if f not in fields]
    if unknown or missing:
        problem = f"unknown field(s) {unknown}" if unknown else f"missing field(s) {missing}"
        raise ConfigError(f"{name}: {problem}; it takes {', '.join('{' + f + '}' for f in allowed)}")


def _rendered(tokenizer, text: str, chat: bool) -> tuple[str, bool]:
    """(the text the tokenizer encodes, whether it adds its special tokens) for a prompt as plain text or as one
    user message through the chat template, ending with the assistant's generation prompt."""
    if not chat:
        return text, True
    if not getattr(tokenizer, "chat_template", None):
        raise ConfigError("chat: the tokenizer has no chat template; render the prompt as plain text instead")
    return tokenizer.apply_chat_template([{"role": "user", "content": text}], tokenize=False,
                                         add_generation_prompt=True), False


def answer_token_ids(tokenizer, prompt: str, answers: Sequence[str], chat: bool) -> tuple[int, ...]:
    """The one token id of each answer as it follows `prompt` (rendered as `data.tokenize.encode_prompt` renders it):
    ConfigError when an answer is not exactly one token there, or two answers share a token."""
    rendered, special = _rendered(tokenizer, prompt, chat)
    base = tokenizer(rendered, add_special_tokens=special)["input_ids"]
    ids = []
    for answer in answers:
        full = tokenizer(rendered + answer, add_special_tokens=special)["input_ids"]
        if len(full) != len(base) + 1 or full[: len(base)] != base:
            shared = next((i for i, (a, b) in enumerate(zip(base, full, strict=False)) if a != b),
                          min(len(base), len(full)))
            raise ConfigError(f"the answer {answer!r} is not one token after the prompt in this tokenizer (the "
                              f"prompt's end and the answer become {tokenizer.convert_ids_to_tokens(full[shared:])}); "
                              "choose answers that are single tokens there, e.g. without the leading space when the "
                              "prompt ends with a space or a new turn")
        ids.append(full[-1])
    if len(set(ids)) < len(ids):
        raise ConfigError(f"the answers {list(answers)} share a token; they must be different tokens")
    return tuple(ids)


@dataclass(frozen=True)
class _Answers:
    """A prompt and one-token completions, as the scoring engine reads examples."""

    prompt: list[int]
    completions: tuple[list[int], ...]


def answer_logps(model, prompts: list[list[int]], answer_ids: Sequence[int], pad_id: int) -> torch.Tensor:
    """log p(answer | prompt) `[N, k]` (float32) of each one-token answer after each prompt (token ids), all in one
    forward pass of the scoring engine (each prompt computed once, the answers attending to it)."""
    if not prompts:
        return torch.zeros(0, len(answer_ids))
    device = next(model.parameters()).device
    examples = [_Answers(prompt, tuple([a] for a in answer_ids)) for prompt in prompts]
    with evaluation_mode(model):
        scores = score_slots(model, examples, pad_id, device)
    # each slot holds one answer token; where it sits in the row depends on the layout, so sum under the mask
    return torch.stack([(slot * mask).sum(-1) for slot, mask in zip(scores.logps, scores.masks, strict=True)],
                       dim=1).float().cpu()


def cut_left(ids: list[int], limit: int) -> tuple[list[int], bool]:
    """The last `limit` ids (the end of a prompt is what its answer follows), and whether any were cut."""
    return (ids[-limit:], True) if len(ids) > limit else (ids, False)


def judge_choices(tokenizer, template: str, choices: Sequence[str] | None, chat: bool
                  ) -> tuple[tuple[str, str], tuple[int, ...]]:
    """The two answers a `PromptedJudge` compares (default " A", " B"; "A", "B" after a chat turn) and their
    token ids after the rendered `template`; ConfigError when they are not two single, different tokens."""
    choices = tuple(choices) if choices is not None else (("A", "B") if chat else (" A", " B"))
    if len(choices) != 2:
        raise ConfigError(f"choices: two answers (for the first and the second response), got {list(choices)}")
    probe = template.format(question="Q", first="R1", second="R2")
    return choices, answer_token_ids(tokenizer, probe, choices, chat)


class PromptedJudge:
    """A causal LM as judge: the `template` (fields {question}, {first}, {second}) is rendered, and the
    next-token log-probs of the two `choices` (default " A", " B"; "A", "B" with `chat`) are compared:

        margin = log p(choice_A | prompt) − log p(choice_B | prompt),

    first when margin > tie_margin, second when margin < −tie_margin, tie otherwise. One forward pass per batch
    of `batch_size` presentations, no sampling. Prompts longer than `max_length` − 1 tokens keep their end
    (counted in `truncated`)."""

    def __init__(self, model, tokenizer, template: str = DEFAULT_JUDGE_TEMPLATE, tie_margin: float = 0.0,
                 choices: Sequence[str] | None = None, chat: bool = False, batch_size: int = 16,
                 max_length: int = 1024) -> None:
        check_template(template, JUDGE_FIELDS)
        check_judge_settings(tie_margin, batch_size, max_length)
        self.model, self.tokenizer, self.template, self.chat = model, tokenizer, template, chat
        self.tie_margin, self.batch_size, self.max_length = tie_margin, batch_size, max_length
        self.choices, self.choice_ids = judge_choices(tokenizer, template, choices, chat)
        self.truncated = 0

    def render(self, question: str, first: str, second: str) -> str:
        return self.template.format(question=question, first=first, second=second)

    def encode(self, question: str, first: str, second: str) -> list[int]:
        ids, cut = cut_left(encode_prompt(self.tokenizer, self.render(question, first, second), chat=self.chat),
                            self.max_length - 1)
        self.truncated += cut
        return ids

    def margins(self, questions: list[str], firsts: list[str], seconds: list[str]) -> torch.Tensor:
        """log p(A) − log p(B) `[N]` (float64) per presentation."""
        prompts = [self.encode(q, a, b) for q, a, b in zip(questions, firsts, seconds, strict=True)]
        parts = [answer_logps(self.model, prompts[start: start + self.batch_size], self.choice_ids,
                              self.tokenizer.pad_token_id).double()
                 for start in range(0, len(prompts), self.batch_size)]
        logps = torch.cat(parts) if parts else torch.zeros(0, 2, dtype=torch.float64)
        return logps[:, 0] - logps[:, 1]

    def judge(self, questions: list[str], firsts: list[str], seconds: list[str]) -> list[str]:
        return verdicts_from_margins(self.margins(questions, firsts, seconds), self.tie_margin)


class RewardJudge:
    """Any alignlab reward as judge: margin = score(q, first) − score(q, second) (one `score` call for both),
    first when margin > tie_margin, second when margin < −tie_margin, tie otherwise (equal scores with the
    default 0)."""

    def __init__(self, reward, tie_margin: float = 0.0) -> None:
        check_judge_settings(tie_margin, 1, 2)
        self.reward, self.tie_margin = reward, tie_margin

    def margins(self, questions: list[str], firsts: list[str], seconds: list[str]) -> torch.Tensor:
        n = len(questions)
        if not n:
            return torch.zeros(0, dtype=torch.float64)
        scores = torch.as_tensor(self.reward.score([*questions, *questions], [*firsts, *seconds])).double().cpu()
        if scores.shape != (2 * n,):
            raise ConfigError(f"reward '{getattr(self.reward, 'name', self.reward)}' gave scores of shape "
                              f"{tuple(scores.shape)} for {2 * n} completions; a judge needs one number each")
        return scores[:n] - scores[n:]

    def judge(self, questions: list[str], firsts: list[str], seconds: list[str]) -> list[str]:
        return verdicts_from_margins(self.margins(questions, firsts, seconds), self.tie_margin)


def check_judge_settings(tie_margin: float, batch_size: int, max_length: int) -> None:
    if not (isinstance(tie_margin, int | float) and math.isfinite(tie_margin) and tie_margin >= 0):
        raise ConfigError(f"tie_margin must be a finite number ≥ 0, got {tie_margin!r}")
    if batch_size < 1:
        raise ConfigError(f"batch_size must be at least 1, got {batch_size}")
    if max_length < 2:
        raise ConfigError(f"max_length must be at least 2 tokens, got {max_length}")


# --- the evaluation command -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class JudgedPair:
    question: str
    chosen: str
    rejected: str
    location: str


def parse_judged_pair(record: Any, source: str, location: str) -> JudgedPair:
    """A record with text ``prompt``, ``chosen`` and ``rejected`` (the judge reads text, not chat messages)."""
    check = RecordChecker(source, location)
    record = check.record(record, "prompt, chosen, rejected")
    values = []
    for name in ("prompt", "chosen", "rejected"):
        value = check.required(record, name)
        if not isinstance(value, str):
            raise check.error(f"expected a string (the judge is shown text), got {type(value).__name__}", field=name)
        if name != "prompt" and not value.strip():
            raise check.error("empty text", field=name)
        values.append(value)
    return JudgedPair(*values, f"{source}:{location}")


def load_judged_pairs(path: str) -> list[JudgedPair]:
    """Every record of `path` as a `JudgedPair`; the first bad record raises DataError, and so does a file
    without records."""
    pairs = [parse_judged_pair(record, str(path), location) for location, record in read_records(path)]
    if not pairs:
        raise DataError("no records; a judge evaluation needs prompt/chosen/rejected records", source=str(path))
    return pairs


def _judge_all(judge, presentations: list[Presentation], batch_size: int, desc: str, progress: bool
               ) -> tuple[list[str], list[float]]:
    """Verdicts and margins of `judge` on `presentations`, `batch_size` at a time, with a progress bar."""
    from tqdm import tqdm

    verdicts, margins = [], []
    for start in tqdm(range(0, len(presentations), batch_size), desc=desc, unit="batch", disable=not progress):
        chunk = presentations[start: start + batch_size]
        m = judge.margins([p.question for p in chunk], [p.first for p in chunk], [p.second for p in chunk])
        verdicts += verdicts_from_margins(m, judge.tie_margin)
        margins += m.tolist()
    return verdicts, margins


def plot_judge(result: dict, path: Path, title: str) -> None:
    """One bar per rate of `result` (consistency, primacy, recency, accuracy, robustness per bias), on [0, 1]."""
    plt = pyplot()

    bars = {"consistency": result["consistency"], "primacy": result["primacy"], "recency": result["recency"],
            "accuracy": result["accuracy"]}
    bars |= {f"robust: {bias}": rate for bias, rate in result["robustness"].items()}
    colors = ["tab:blue", "tab:orange", "tab:orange", "tab:green"] + ["tab:purple"] * len(result["robustness"])
    fig, ax = plt.subplots(figsize=(max(6.4, 0.9 * len(bars) + 1.5), 4.0))
    positions = range(len(bars))
    ax.bar(positions, [v or 0.0 for v in bars.values()], color=colors)
    for x, value in zip(positions, bars.values(), strict=True):
        ax.text(x, (value or 0.0) + 0.02, "n/a" if value is None else f"{value:.2f}", ha="center", fontsize=8)
    ax.set_xticks(list(positions), list(bars), rotation=30, ha="right")
    ax.set_ylim(0, 1.1)
    ax.set_ylabel("rate")
    ax.set_title(title)
    fig.tight_layout()
    save_figure(fig, path)


def _build_judge(model: str | None, reward: str | dict | None, template: str, choices, chat: bool, tie_margin: float,
                 batch_size: int, max_length: int, dtype: str, trust_remote_code: bool):
    if reward is not None:
        return RewardJudge(rewards.from_config(reward), tie_margin)

    tokenizer = load_tokenizer(model, trust_remote_code)
    judge_choices(tokenizer, template, choices, chat)  # before the model loads
    loaded = load_model(model, dtype, trust_remote_code)
    limit = getattr(loaded.config, "max_position_embeddings", None) or max_length
    return PromptedJudge(loaded, tokenizer, template, tie_margin, choices, chat, batch_size, min(max_length, limit))


def evaluate_judge(data: str, out: str, model: str | None = None, reward: str | dict | None = None,
                   template: str = DEFAULT_JUDGE_TEMPLATE, choices: Sequence[str] | None = None, chat: bool = False,
                   tie_margin: float = 0.0, biases: Sequence[str] = tuple(INJECTIONS), favour: str = "other",
                   batch_size: int = 16, max_length: int = 1024, dtype: str = "float32",
                   trust_remote_code: bool = False, overwrite: bool = False, progress: bool = True,
                   log=print) -> dict:
    """`alignlab evaluate judge`: judge every prompt/chosen/rejected record of `data` in both orders and after
    each bias injection, with a prompted `model` (`PromptedJudge`) or a `reward` (name or config mapping,
    `RewardJudge`); writes ``result.json``, ``verdicts.jsonl`` (one line per pair) and ``judges.png`` into `out`.
    Every setting and record is checked before the folder is written."""
    _check_judge_request(model, reward, template, tie_margin, biases, favour, batch_size, max_length)
    folder = RunFolder(out)
    folder.check_usable(resume=False, overwrite=overwrite)
    pairs = load_judged_pairs(data)
    judge = _build_judge(model, reward, template, choices, chat, tie_margin, batch_size, max_length, dtype,
                         trust_remote_code)
    biases = list(dict.fromkeys(biases))
    folder.create(overwrite)
    try:
        base = ([Presentation(p.question, p.chosen, p.rejected) for p in pairs]
                + [Presentation(p.question, p.rejected, p.chosen) for p in pairs])
        verdicts, margins = _judge_all(judge, base, batch_size, "judge (both orders)", progress)
        n = len(pairs)
        ab, ba = verdicts[:n], verdicts[n:]
        favoured = [favoured_position(v, favour) for v in verdicts]
        injected = [INJECTIONS[bias](p, f) for bias in biases for p, f in zip(base, favoured, strict=True)]
        after, _ = _judge_all(judge, injected, batch_size, "judge (bias injections)", progress)
        by_bias = {bias: after[i * 2 * n: (i + 1) * 2 * n] for i, bias in enumerate(biases)}
        settings = {"template": template if model is not None else None, "choices": list(getattr(judge, "choices", ()))
                    or None, "chat": chat if model is not None else None, "tie_margin": tie_margin,
                    "biases": biases, "favour": favour, "batch_size": batch_size,
                    "max_length": getattr(judge, "max_length", None)}
        result = _judge_result(ab, ba, {name: robustness(verdicts, v, favoured) for name, v in by_bias.items()})
        result = {"data": str(data), "judge": "prompted" if model is not None else "reward", "model": model,
                  "reward": reward, "settings": settings, "pairs": n, **result,
                  "truncated_prompts": getattr(judge, "truncated", 0)}
        folder.write_jsonl("verdicts.jsonl", _verdict_rows(pairs, verdicts, margins, by_bias, favoured))
        folder.write_json("result.json", result)
        plot_judge(result, folder.file("judges.png"), f"Judge on {n} pairs ({Path(data).name})")
        write_report_safely(folder.path, log)
    finally:
        folder.unlock()
    if result["truncated_prompts"]:
        log(f"warning: {result['truncated_prompts']} judge prompts were longer than {settings['max_length']} tokens "
            "and lost their beginning")
    rates = ", ".join(f"{name} {format_rate(rate)}" for name, rate in result["robustness"].items())
    log(f"{n} pairs judged in both orders: consistency {format_rate(result['consistency'])} "
        f"(primacy {format_rate(result['primacy'])}, recency {format_rate(result['recency'])}), "
        f"accuracy {format_rate(result['accuracy'])}"
        f"{'; robustness ' + rates if rates else ''}; wrote {folder.file('result.json')}, "
        f"{folder.file('verdicts.jsonl')}, {folder.file('judges.png')}")
    return result


def _check_judge_request(model: str | None, reward, template: str, tie_margin: float, biases: Sequence[str],
                         favour: str, batch_size: int, max_length: int) -> None:
    """One line for the first setting of `evaluate_judge` that cannot work, before anything is loaded."""
    if (model is None) == (reward is None):
        raise ConfigError("a judge is a prompted model (--model) or a reward (--reward): give exactly one")
    unknown = [b for b in biases if b not in INJECTIONS]
    if unknown:
        raise ConfigError(f"unknown bias injection(s) {unknown}; known: {', '.join(INJECTIONS)}")
    if favour not in FAVOUR:
        raise ConfigError(f"favour must be one of {', '.join(FAVOUR)}, got {favour!r}")
    check_judge_settings(tie_margin, batch_size, max_length)
    if model is not None:
        check_template(template, JUDGE_FIELDS)
    else:
        rewards.check_entry(reward)


def _judge_result(ab: Sequence[str], ba: Sequence[str], robust: dict) -> dict:
    """The verdict counts, position bias, accuracy and per-injection robustness of a judged run."""
    bias = position_bias(ab, ba)
    accuracy = preference_accuracy(ab, ba)
    return {"counts": {"ab": verdict_counts(ab), "ba": verdict_counts(ba), "consistent": bias.consistent,
                       "primacy": bias.primacy_pairs, "recency": bias.recency_pairs,
                       "tie_mismatch": bias.tie_mismatch_pairs},
            "consistency": bias.consistency, "primacy": bias.primacy, "recency": bias.recency,
            "accuracy": accuracy.accuracy, "accuracy_both_orders": accuracy.both_orders, "ties": accuracy.ties,
            "robustness": {name: r.robustness for name, r in robust.items()},
            "followed": {name: r.followed for name, r in robust.items()}}


def _verdict_rows(pairs: Sequence, verdicts: Sequence[str], margins: Sequence, by_bias: dict[str, list],
                  favoured: Sequence) -> list[dict]:
    """verdicts.jsonl: per pair its verdicts and margins in both orders (the first half of `verdicts` in the
    pair's order, the second half swapped), and what each injection changed."""
    n = len(pairs)
    rows = []
    for i, pair in enumerate(pairs):
        ab, ba = verdicts[i], verdicts[n + i]
        row = {"location": pair.location, "ab": ab, "ba": ba, "margin_ab": margins[i], "margin_ba": margins[n + i],
               "consistent": (ab, ba) in CONSISTENT, "chosen_wins": int(ab == "first") + int(ba == "second")}
        for name, v in by_bias.items():
            row[name] = {"ab": v[i], "ba": v[n + i], "favoured_ab": favoured[i], "favoured_ba": favoured[n + i]}
        rows.append(row)
    return rows


def verdict_counts(verdicts: Sequence[str]) -> dict[str, int]:
    """How many verdicts are first, second and tie (zeros included)."""
    counts = Counter(verdicts)
    return {v: counts.get(v, 0) for v in VERDICTS}
