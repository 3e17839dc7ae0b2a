"""Anyprefer preference-data synthesis (Zhou et al., ICLR 2025, "Anyprefer: An Agentic Framework for Preference
Data Synthesis"), as orchestration over pluggable callables; no model code lives here.

**The paper's (abstract).** Synthesis is a cooperative two-player Markov game. The *target* model, under its
prompt p_t, generates candidate responses to an instruction x. The *judge* model, under its prompt p_j and helped
by external *tools* that supply knowledge about x, ranks them; the best and worst become the pair (y⁺, y⁻). A
feedback mechanism optimises both players' prompts so that the pairs improve:

    max over (p_t, p_j) of  E_x[ R(x, y⁺, y⁻) ],   R = a reward model's rating of the pair's quality.

The output (Anyprefer-V1, 58K pairs) is used for preference training. The paper's textual-gradient feedback and
its exact round structure are not confirmed here: no official code was found.

**The unofficial reimplementation's (1rsh/anyprefer, `main.py`, `prompts.py`, `utils/response_models.py`,
`utils/tools/web_search.py`).** Per instruction, up to 3 rounds of: sample 5 candidates under the target's system
prompt; an LLM judge scores each candidate 1..10 (it may call a web-search tool); sort by score, y⁺ = the top and
y⁻ = the bottom; an LLM reward model scores the pair 1..10; accept when R ≥ 8, otherwise an LLM prompt optimiser
rewrites *both* system prompts and the round repeats. Prompts are reset to the defaults after each instruction.
It returns nothing when no round reaches the threshold; its stable descending sort takes the *last* of tied
lowest candidates as y⁻.

**Ours.**
- Every role is a callable: `Generator`, `Tool`, `Judge`, `PairReward`, `Feedback`. The tools run once per
  instruction (their knowledge does not depend on the prompts) and the judge receives their outputs as a list.
- Prompts come from finite lists; feedback picks the next (target, judge) prompt *indices* — a discrete stand-in
  for rewriting prompts. It is consulted only after a round below the threshold, as in the reimplementation, and
  every instruction starts again from prompts (0, 0).
- `best_and_worst` breaks ties towards the first index for both ends, and gives no pair when y⁺ and y⁻ would be
  the same text (all candidates identical, all scores equal, fewer than two candidates): such a round is counted
  (`PairResult.degenerate_rounds`), not scored, and feedback sees R = −∞.
- When no round is accepted, the best round's pair (highest R, earliest on ties) is returned with
  ``accepted=False``: the caller decides whether to keep it.
- The toy (the project's demo): p_t = a review-style prefix, the tool = `genre_facts`, the judge =
  `lexicon_judge` (sentiment − penalty · genre contradictions), R = `judge_margin` (max − min of the judge's
  scores), feedback = `rotate_feedback`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from alignlab.errors import ConfigError

DEFAULT_CANDIDATES = 5
"""C, the candidates the target samples per round (5 in the reimplementation)."""

DEFAULT_MAX_ROUNDS = 3
"""The most rounds per instruction (3 in the reimplementation)."""

GENRES = ("horror", "comedy", "drama", "thriller", "romance", "western", "musical", "documentary", "animated")
"""The toy's genre lexicon, matched as whole words, case-insensitively ("dramatic" is not "drama")."""

NO_PAIR_REWARD = float("-inf")
"""The reward feedback sees for a round that gave no usable pair (and `PairResult.reward` when no round did)."""

Generator = Callable[[str, str, int], list[str]]
Tool = Callable[[str], Any]
Judge = Callable[[str, list[str], str, list[Any]], list[float]]
PairReward = Callable[[str, str, str, list[float]], float]


@dataclass
class FeedbackState:
    """What the feedback sees after a round below the threshold: the round (1-based), the prompt indices used,
    the pair's reward R (−∞ when the round gave no pair), the sizes of the prompt lists and the judge's scores."""

    round: int
    target_index: int
    judge_index: int
    reward: float
    n_target_prompts: int
    n_judge_prompts: int
    scores: list[float]


Feedback = Callable[[FeedbackState], tuple[int, int]]


@dataclass
class PairResult:
    """One instruction's outcome: the pair of the accepted round, or of the best round when none was accepted;
    `rounds` is the rounds run, `history` one dict per round (prompt indices, scores, y⁺/y⁻ indices, reward)."""

    instruction: str
    chosen: str | None
    rejected: str | None
    reward: float
    accepted: bool
    rounds: int
    target_prompt: str
    judge_prompt: str
    history: list[dict] = field(default_factory=list)
    degenerate_rounds: int = 0


def rotate_feedback(state: FeedbackState) -> tuple[int, int]:
    """The toy's feedback: the next (target, judge) prompt indices in odometer order,

        t' = (t + 1) mod n_t,   j' = (j + 1) mod n_j if t' = 0 else j,

    so from (0, 0) the rounds try (0,0), (1,0), …, (n_t−1, 0), (0, 1), …: the target prompt switches after every
    low-reward round, and the judge prompt switches once every target prompt was tried with it. With one target
    prompt the judge prompt switches every round. R and the scores are not used (the loop calls feedback only
    when R is below the threshold)."""
    target = (state.target_index + 1) % state.n_target_prompts
    judge = (state.judge_index + 1) % state.n_judge_prompts if target == 0 else state.judge_index
    return target, judge


def best_and_worst(candidates: Sequence[str], scores: Sequence[float]) -> tuple[int, int] | None:
    """(argmax, argmin) of the judge's scores, ties to the first index at both ends; None when the two would be
    the same text (fewer than two candidates, all scores equal, or identical strings): such a pair teaches
    nothing."""
    if len(scores) != len(candidates):
        raise ConfigError(f"the judge gave {len(scores)} scores for {len(candidates)} candidates; it must give one "
                          "per candidate")
    if any(math.isnan(score) for score in scores):
        raise ConfigError(f"the judge gave a NaN score: {list(scores)}")
    if not candidates:
        return None
    best = max(range(len(scores)), key=lambda i: (scores[i], -i))
    worst = min(range(len(scores)), key=lambda i: (scores[i], i))
    return None if candidates[best] == candidates[worst] else (best, worst)


def judge_margin(x: str, y_plus: str, y_minus: str, scores: Sequence[float]) -> float:
    """The toy's pair reward R = max_i s_i − min_i s_i, the judge's margin between y⁺ and y⁻ (x and the texts
    are not used)."""
    if not scores:
        raise ConfigError("judge_margin needs at least one judge score")
    return max(scores) - min(scores)


def _check_settings(target_prompts: Sequence[str], judge_prompts: Sequence[str], threshold: float, candidates: int,
                    max_rounds: int) -> None:
    """Raise ConfigError, in one line, for settings the loop cannot run with."""
    if not target_prompts:
        raise ConfigError("anyprefer needs at least one target prompt, got an empty list")
    if not judge_prompts:
        raise ConfigError("anyprefer needs at least one judge prompt, got an empty list")
    if candidates < 2:
        raise ConfigError(f"anyprefer needs at least 2 candidates per round to form a pair, got {candidates}")
    if max_rounds < 1:
        raise ConfigError(f"anyprefer needs max_rounds of at least 1, got {max_rounds}")
    if math.isnan(threshold):
        raise ConfigError("anyprefer's reward threshold is NaN")


def _next_indices(feedback: Feedback, state: FeedbackState) -> tuple[int, int]:
    """The feedback's next prompt indices, checked to lie inside the prompt lists."""
    target, judge = feedback(state)
    if not (0 <= target < state.n_target_prompts and 0 <= judge < state.n_judge_prompts):
        raise ConfigError(f"feedback chose prompt indices ({target}, {judge}) outside the {state.n_target_prompts} "
                          f"target and {state.n_judge_prompts} judge prompts")
    return target, judge


def _play_round(x: str, p_t: str, p_j: str, generate: Generator, knowledge: list[Any], judge: Judge,
                pair_reward: PairReward, candidates: int) -> tuple[list[str], list[float], tuple[int, int] | None,
                                                                  float]:
    """One round: C candidates under p_t, the judge's scores under p_j with the tools' knowledge, (y⁺, y⁻) and
    R(x, y⁺, y⁻, scores), R = −∞ when there is no usable pair."""
    texts = list(generate(p_t, x, candidates))
    scores = [float(score) for score in judge(x, texts, p_j, knowledge)]
    pair = best_and_worst(texts, scores)
    if pair is None:
        return texts, scores, None, NO_PAIR_REWARD
    reward = float(pair_reward(x, texts[pair[0]], texts[pair[1]], scores))
    if math.isnan(reward):
        raise ConfigError(f"the pair reward returned NaN for instruction {x!r}")
    return texts, scores, pair, reward


def _result(x: str, best: dict | None, last: dict, texts: dict[int, tuple[str, str]], accepted: bool,
            history: list[dict], prompts: tuple[Sequence[str], Sequence[str]]) -> PairResult:
    """The PairResult of the round `best` (or, when no round gave a pair, of the last round, with no pair)."""
    chosen_round = best or last
    chosen, rejected = texts.get(chosen_round["round"], (None, None))
    reward = chosen_round["reward"] if best is not None else NO_PAIR_REWARD
    return PairResult(
        instruction=x, chosen=chosen, rejected=rejected, reward=reward, accepted=accepted, rounds=len(history),
        target_prompt=prompts[0][chosen_round["target_index"]], judge_prompt=prompts[1][chosen_round["judge_index"]],
        history=history, degenerate_rounds=sum(entry["reward"] is None for entry in history))


def anyprefer_pair(x: str, target_prompts: Sequence[str], judge_prompts: Sequence[str], generate: Generator,
                   tools: Sequence[Tool], judge: Judge, pair_reward: PairReward, threshold: float,
                   candidates: int = DEFAULT_CANDIDATES, max_rounds: int = DEFAULT_MAX_ROUNDS,
                   feedback: Feedback = rotate_feedback) -> PairResult:
    """Anyprefer's loop for one instruction x. Knowledge q = [tool(x) for each tool], once. Round r = 1, 2, …:
    candidates y_1..y_C = generate(p_t, x, C); s = judge(x, y, p_j, q); (y⁺, y⁻) = (argmax s, argmin s);
    R = pair_reward(x, y⁺, y⁻, s). Accept and stop when R ≥ threshold; otherwise (p_t, p_j) = feedback(state) and
    go on, for at most `max_rounds` rounds. Prompts start at index (0, 0). Not accepted: the best round's pair
    (highest R, earliest on ties) with ``accepted=False``; a round without a usable pair is counted, not scored."""
    _check_settings(target_prompts, judge_prompts, threshold, candidates, max_rounds)
    knowledge = [tool(x) for tool in tools]
    target_index, judge_index = 0, 0
    history: list[dict] = []
    texts: dict[int, tuple[str, str]] = {}
    best: dict | None = None
    for round_number in range(1, max_rounds + 1):
        candidates_out, scores, pair, reward = _play_round(
            x, target_prompts[target_index], judge_prompts[judge_index], generate, knowledge, judge, pair_reward,
            candidates)
        entry = {"round": round_number, "target_index": target_index, "judge_index": judge_index, "scores": scores,
                 "chosen_index": pair[0] if pair else None, "rejected_index": pair[1] if pair else None,
                 "reward": reward if pair else None}
        history.append(entry)
        if pair is not None:
            texts[round_number] = (candidates_out[pair[0]], candidates_out[pair[1]])
            if best is None or reward > best["reward"]:
                best = entry
            if reward >= threshold:
                return _result(x, entry, entry, texts, True, history, (target_prompts, judge_prompts))
        if round_number < max_rounds:
            state = FeedbackState(round_number, target_index, judge_index, reward, len(target_prompts),
                                  len(judge_prompts), scores)
            target_index, judge_index = _next_indices(feedback, state)
    return _result(x, best, history[-1], texts, False, history, (target_prompts, judge_prompts))


def pair_record(result: PairResult) -> dict:
    """The JSON record of a result: prompt/chosen/rejected (what `alignlab train` reads) and the reward, acceptance,
    rounds and prompts used; ``reward`` is None when no round gave a pair."""
    reward = result.reward if result.chosen is not None else None
    return {"prompt": result.instruction, "chosen": result.chosen, "rejected": result.rejected, "reward": reward,
            "accepted": result.accepted, "rounds": result.rounds, "target_prompt": result.target_prompt,
            "judge_prompt": result.judge_prompt}


_GENRE_PATTERN = re.compile(r"\b(" + "|".join(GENRES) + r")\b", re.IGNORECASE)
_TITLE_PATTERN = re.compile(r'"([^"]+)"')


def genre_facts(instruction: str) -> dict:
    """The toy's tool: the facts an instruction like ``Write a review of the horror film "The Long Night".``
    states, {"genre": the first lexicon genre outside the quoted title (lower case), "title": the first
    double-quoted text}; None for a fact that is absent."""
    title_match = _TITLE_PATTERN.search(instruction)
    title = title_match.group(1).strip() if title_match else None
    rest = _TITLE_PATTERN.sub(" ", instruction)
    genre_match = _GENRE_PATTERN.search(rest)
    return {"genre": genre_match.group(1).lower() if genre_match else None, "title": title}


def contradictions(response: str, facts: dict) -> int:
    """The toy's lexicon lookup: how many times `response` names a lexicon genre other than facts["genre"]
    (whole words, case-insensitive; occurrences inside the film's title do not count). 0 when the genre is
    unknown: there is nothing to contradict."""
    genre = facts.get("genre")
    if not genre:
        return 0
    title = facts.get("title")
    text = re.sub(re.escape(title), " ", response, flags=re.IGNORECASE) if title else response
    return sum(match.group(1).lower() != genre.lower() for match in _GENRE_PATTERN.finditer(text))


def _facts_in(knowledge: Sequence[Any]) -> dict:
    """The first tool output that is a dict with a "genre" key, or {} (no facts)."""
    return next((item for item in knowledge if isinstance(item, dict) and "genre" in item), {})


def judge_penalty(judge_prompt: str, default: float) -> float:
    """The toy judge's use of p_j: a judge prompt that reads as a number (e.g. "1.0") is the contradiction
    penalty λ; any other text leaves the default λ. λ must be finite and ≥ 0."""
    try:
        penalty = float(judge_prompt.strip())
    except ValueError:
        penalty = default
    if not math.isfinite(penalty) or penalty < 0:
        raise ConfigError(f"the lexicon judge's contradiction penalty must be a finite number ≥ 0, got {penalty}")
    return penalty


def lexicon_judge(sentiment: Callable[[list[str]], list[float]], penalty: float = 0.5) -> Judge:
    """The toy judge: s_i = sentiment(y_i) − λ · contradictions(y_i, facts), with the facts taken from the tools'
    knowledge (`genre_facts`'s dict) and λ = `judge_penalty(p_j, penalty)`. `sentiment` scores a batch of texts
    (the command passes VADER's compound score); this module stays model-free."""
    if not math.isfinite(penalty) or penalty < 0:
        raise ConfigError(f"the lexicon judge's contradiction penalty must be a finite number ≥ 0, got {penalty}")

    def judge(x: str, candidates: list[str], judge_prompt: str, knowledge: list[Any]) -> list[float]:
        facts = _facts_in(knowledge)
        weight = judge_penalty(judge_prompt, penalty)
        sentiments = list(sentiment(list(candidates)))
        if len(sentiments) != len(candidates):
            raise ConfigError(f"the sentiment scorer gave {len(sentiments)} scores for {len(candidates)} texts")
        return [float(s) - weight * contradictions(y, facts) for s, y in zip(sentiments, candidates, strict=True)]

    return judge
