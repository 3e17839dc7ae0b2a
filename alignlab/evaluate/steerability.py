"""Steerability evaluation (Chang et al., "A Course Correction in Steerability Evaluation"): user goals and rewrites
as points of a normalised multi-attribute goal space, scored by how far the rewrite lands from the goal, how much it
over- or undershoots along the requested direction, and how much it moves sideways.

Official code: tchang1997/steerability, ``src/steerability/steerability_metrics.py``, ``goals.py``,
``instruction_generator.py``; method notes in specs/evaluation.md §4. With z0 the source, z* the target (an
inactive attribute keeps z0's value) and ẑ the rewrite, g = z* − ẑ, r = z* − z0 and m = ẑ − z0:

    steering error  = ‖ẑ − z*‖₂
    miscalibration  = |g·r| / ‖r‖²
    orthogonality   = clip(‖g − (g·r/‖r‖²)·r‖ / (‖m‖ + 1e-4·‖r‖), 0, 1)

The toy demonstration (`steerability_report`) samples rewrites from a model that cannot read instructions: it
continues a *steering prefix*, the source's first words, so plain sampling is goal-blind and best-of-N by
−‖ẑ − z*‖ is the only steering; with ``prompting="direct"`` an instruction-following model gets the paper's direct
prompt and the source as one chat turn instead.
"""

from __future__ import annotations

import importlib
import importlib.util
import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from alignlab.assets.corpus import review_prompts
from alignlab.decode.sampling import generate
from alignlab.errors import ConfigError
from alignlab.registries import unknown_name
from alignlab.report.findings import Findings
from alignlab.rewards.sentiment import SentimentReward

__all__ = ["ATTRIBUTES", "CUT_POINTS", "METHODS", "Attribute", "bin_index", "direct_prompt", "goal_space",
           "map_texts", "modifier", "normalise", "requested_bins", "sample_delta", "sample_probe",
           "shifted_cut_points", "steerability_report", "steering_metrics", "steering_prefix", "summarize"]

CUT_POINTS = (-1.0, -0.5, -0.2, -0.1, 0.1, 0.2, 0.5, 1.0)
"""The direct prompt's cut points (``DIRECT_PROMPT_CUT_POINTS``): 7 bins of movement, bin 3 the "no move" one."""
SOURCE_BIN = 3
METHODS = ("sample", "best_of_n")
METRICS = ("steering_error", "miscalibration", "orthogonality")
NO_EXPLAIN = " Respond with only the rewritten text and do not explain your response."
MAX_DELTA, DEADZONE = 0.7, 0.1
PROMPTINGS = ("prefix", "direct")


# ---------------------------------------------------------------------------------------------------- metrics

def _as_matrix(values, name: str) -> torch.Tensor:
    matrix = torch.as_tensor(values, dtype=torch.float64)
    if matrix.dim() != 2:
        raise ConfigError(f"{name} must be an [N, D] matrix, got shape {tuple(matrix.shape)}")
    return matrix


def shifted_cut_points(z_source) -> torch.Tensor:
    """`[..., 8]` cut points c shifted by each source value and clipped: clip(z0 + c, 0, 1)
    (``get_dynamic_cutpoints``). For z0 = 0.5: [0, 0, .3, .4, .6, .7, 1, 1]."""
    z0 = torch.as_tensor(z_source, dtype=torch.float64)
    return (z0[..., None] + torch.tensor(CUT_POINTS, dtype=torch.float64)).clamp(0, 1)


def bin_index(z, z_source) -> torch.Tensor:
    """The bin of each coordinate against the source's shifted cut points, #{k : z ≥ clip(z0 + c_k, 0, 1)} − 1, in
    0..7 (the official ``np.sum(z >= cuts) - 1``). The source itself sits in bin 3 except at z0 = 1, and a value of
    exactly 1 always lands in bin 7 (the last cut point clips to 1): both as in the official code."""
    z = torch.as_tensor(z, dtype=torch.float64)
    return (z[..., None] >= shifted_cut_points(z_source)).sum(-1) - 1


def requested_bins(delta) -> torch.Tensor:
    """The requested move in bins relative to the source, #{k : δ ≥ c_k} − 1 − 3 against the *unshifted* cut points
    (``get_dist_requested``); δ = 0 (an inactive attribute) is bin 0."""
    delta = torch.as_tensor(delta, dtype=torch.float64)
    return (delta[..., None] >= torch.tensor(CUT_POINTS, dtype=torch.float64)).sum(-1) - 1 - SOURCE_BIN


def _formulas(g: torch.Tensor, r: torch.Tensor, m: torch.Tensor, r_ortho: torch.Tensor) -> dict[str, torch.Tensor]:
    """Miscalibration |g·r|/‖r‖² and orthogonality: the rejection of g from r_ortho over ‖m‖ + 1e-4·‖r_ortho‖, clipped
    to [0, 1]. Exact where r ≠ 0 (the official code adds 1e-8 to every norm, which leaves ~1e-4 residues); r = 0
    (nothing requested) gives what those guards give: miscalibration 0, and orthogonality 1 for any move (all of it
    a side effect), 0 without one."""
    def along(vector: torch.Tensor) -> torch.Tensor:
        """(g·v)/‖v‖² per row, 0 where v = 0."""
        sq = vector.pow(2).sum(1)
        return torch.where(sq > 0, (g * vector).sum(1) / sq.clamp_min(1e-300), torch.zeros_like(sq))

    rejection = (g - along(r_ortho)[:, None] * r_ortho).norm(dim=1)
    denominator = (m.norm(dim=1) + 1e-4 * r_ortho.norm(dim=1)).clamp_min(1e-12)
    return {"miscalibration": along(r).abs(), "orthogonality": (rejection / denominator).clamp(0, 1)}


def steering_metrics(z_source, z_target, z_output, binned: bool = False,
                     official_ortho: bool = False) -> dict[str, torch.Tensor]:
    """Per-example steering error ‖ẑ − z*‖, miscalibration |g·r|/‖r‖² and orthogonality
    clip(‖g − (g·r/‖r‖²)r‖ / (‖m‖ + 1e-4‖r‖), 0, 1) of `[N, D]` sources z0, targets z* and outputs ẑ
    (g = z* − ẑ, r = z* − z0, m = ẑ − z0; Chang et al., ``steering_metrics.py``).

    `binned` (the paper's default) first replaces coordinates by bins relative to the source, divided by 7:
    ẑ and z* by `bin_index` − 3 against the source's shifted cut points, r by `requested_bins` of δ = z* − z0 against
    the unshifted ones (as the official code), m by ẑ's relative bin (the source taken as bin 3, as the official
    code). `official_ortho`: the unbinned orthogonality rejects g from the *binned* r, as the official
    ``get_orthogonality`` does (it calls ``get_dist_requested`` without ``cut_points=None``); off, it uses r."""
    z0, target, output = (_as_matrix(v, n) for v, n in ((z_source, "z_source"), (z_target, "z_target"),
                                                          (z_output, "z_output")))
    if not z0.shape == target.shape == output.shape:
        raise ConfigError(f"z_source, z_target and z_output differ in shape: {tuple(z0.shape)}, "
                          f"{tuple(target.shape)}, {tuple(output.shape)}")
    width = len(CUT_POINTS) - 1
    r_binned = requested_bins(target - z0).double() / width
    if binned:
        out_rel = (bin_index(output, z0) - SOURCE_BIN).double() / width
        target_rel = (bin_index(target, z0) - SOURCE_BIN).double() / width
        g, r, m = target_rel - out_rel, r_binned, out_rel
    else:
        g, r, m = target - output, target - z0, output - z0
    metrics = {"steering_error": g.norm(dim=1)}
    metrics.update(_formulas(g, r, m, r_binned if official_ortho and not binned else r))
    return metrics


def summarize(values) -> dict[str, float]:
    """mean, median, quartiles (q1, q3; linear interpolation, as numpy), IQR, min, max and std (population, as
    ``np.std``) of per-example values; None for each when there are none."""
    x = torch.as_tensor(values, dtype=torch.float64).flatten()
    keys = ("mean", "median", "q1", "q3", "iqr", "min", "max", "std")
    if x.numel() == 0:
        return dict.fromkeys(keys)
    q1, median, q3 = (float(torch.quantile(x, q)) for q in (0.25, 0.5, 0.75))
    return {"mean": float(x.mean()), "median": median, "q1": q1, "q3": q3, "iqr": q3 - q1, "min": float(x.min()),
            "max": float(x.max()), "std": float(x.std(unbiased=False))}


# ---------------------------------------------------------------------------------------------------- goal space

@dataclass(frozen=True)
class Attribute:
    """One goal-space axis: `measure` maps texts to raw values x, normalised as clip((x − low)/(high − low), 0, 1);
    `more`/`less` are the direct prompt's phrases for a move up or down."""

    name: str
    measure: Callable[[list[str]], list[float]]
    low: float
    high: float
    more: str
    less: str


def _word_count(texts: list[str]) -> list[float]:
    return [float(len(t.split())) for t in texts]


def _sentiment() -> Callable[[list[str]], list[float]]:
    reward = SentimentReward()
    return lambda texts: [(c + 1) / 2 for c in reward.score([""] * len(texts), list(texts)).tolist()]


def _needs(name: str, *modules: str) -> list:
    missing = [m for m in modules if importlib.util.find_spec(m.split(".")[0]) is None]
    if missing:
        raise ConfigError(f"goal-space attribute '{name}' needs the package(s) {', '.join(missing)}, not installed")
    return [importlib.import_module(m) for m in modules]


def _reading_difficulty() -> Callable[[list[str]], list[float]]:
    (textstat,) = _needs("reading_difficulty", "textstat")
    return lambda texts: [float(textstat.flesch_kincaid_grade(t)) for t in texts]


def _textual_diversity() -> Callable[[list[str]], list[float]]:
    """MTLD (taaled) of the pylats-normalised tokens, 0 without tokens (``goals.TextualDiversity``)."""
    lats, ld = _needs("textual_diversity", "pylats.lats", "taaled.ld")

    def mtld(text: str) -> float:
        toks = lats.Normalize(text, lats.ld_params_en).toks
        return float(ld.lexdiv(toks).mtld) if toks else 0.0
    return lambda texts: [mtld(t) for t in texts]


def _formality() -> Callable[[list[str]], list[float]]:
    """Heylighen–Dewaele F = (noun + adj + adp + article − pron − verb − adv − intj + 100)/2, frequencies in % of the
    alphabetic spaCy tokens, articles = DET tokens a/an/the (``goals.Formality``)."""
    spacy, _ = _needs("formality", "spacy", "en_core_web_sm")
    nlp = spacy.load("en_core_web_sm")
    plus, minus = ("NOUN", "ADJ", "ADP", "ARTICLE"), ("PRON", "VERB", "ADV", "INTJ")

    def score(text: str) -> float:
        tokens = [t for t in nlp(text) if t.is_alpha]
        tags = ["ARTICLE" if t.pos_ == "DET" and t.text.lower() in ("a", "an", "the") else t.pos_ for t in tokens]
        share = {tag: 100 * tags.count(tag) / len(tags) if tags else 0.0 for tag in plus + minus}
        return (sum(share[t] for t in plus) - sum(share[t] for t in minus) + 100) / 2
    return lambda texts: [score(t) for t in texts]


ATTRIBUTES: dict[str, tuple[Callable[[], Callable[[list[str]], list[float]]], float, float, str, str]] = {
    "length": (lambda: _word_count, 5.0, 80.0, "longer", "shorter"),
    "sentiment": (_sentiment, 0.0, 1.0, "more positive", "more negative"),
    "reading_difficulty": (_reading_difficulty, 2.8, 12.9, "harder to read", "easier to read"),
    "textual_diversity": (_textual_diversity, 44.84, 128.54, "use more diverse language", "use less diverse language"),
    "formality": (_formality, 40.37, 69.12, "more formal", "more informal"),
}
"""name → (factory of the measure, min, max, phrase up, phrase down). `length`: whitespace word count with 5/80, fitted
to the toy corpus's short reviews (18–71 words; the official ``text_length`` uses nltk tokens and 78/1,509 for long
texts); `sentiment`: VADER compound c mapped to (c + 1)/2, 0/1. The others need their libraries (textstat; pylats and
taaled; spaCy with en_core_web_sm) and use the official ``normalization.yml`` min/max."""


def goal_space(names: Sequence[str], bounds: dict[str, tuple[float, float]] | None = None) -> list[Attribute]:
    """The attributes `names` (each once), their min/max replaced by `bounds` where given; ConfigError for an
    unknown name, a missing library, or bounds with max ≤ min."""
    if not names or len(set(names)) != len(names):
        raise ConfigError(f"attributes must be non-empty and distinct, got {list(names)}")
    attributes = []
    for name in names:
        if name not in ATTRIBUTES:
            raise unknown_name("goal-space attribute", name, ATTRIBUTES)
        factory, low, high, more, less = ATTRIBUTES[name]
        low, high = (bounds or {}).get(name, (low, high))
        if not (math.isfinite(low) and math.isfinite(high) and high > low):
            raise ConfigError(f"attribute '{name}' bounds must be finite with max > min, got {low}, {high}")
        attributes.append(Attribute(name, factory(), float(low), float(high), more, less))
    return attributes


def normalise(values, low: float, high: float) -> torch.Tensor:
    """z = clip((x − low)/(high − low), 0, 1)."""
    return ((torch.as_tensor(values, dtype=torch.float64) - low) / (high - low)).clamp(0, 1)


def map_texts(attributes: Sequence[Attribute], texts: Sequence[str]) -> torch.Tensor:
    """`[N, D]` normalised goal-space coordinates of `texts`."""
    return torch.stack([normalise(a.measure(list(texts)), a.low, a.high) for a in attributes], dim=1)


# ---------------------------------------------------------------------------------------------------- probe

def sample_delta(z: float, rng: random.Random, max_delta: float = MAX_DELTA, deadzone: float = DEADZONE) -> float:
    """δ uniform on [−max_delta, max_delta] ∩ [−z, 1 − z] (so z + δ stays in [0, 1]) outside the deadzone
    |δ| < `deadzone`: the two intervals [lo, −deadzone] and [deadzone, hi], picked by length."""
    lo, hi = max(-max_delta, -z), min(max_delta, 1.0 - z)
    down, up = max(0.0, -deadzone - lo), max(0.0, hi - deadzone)
    if down + up <= 0:
        raise ConfigError(f"no feasible move from {z} outside the deadzone {deadzone}")
    u = rng.uniform(0, down + up)
    return lo + u if u < down else deadzone + (u - down)


def sample_probe(z_sources, goals_per_source: int, max_active: int, seed: int) -> tuple[list[int], torch.Tensor]:
    """(source index, δ `[D]`) for `goals_per_source` goals of each source: 1..`max_active` active attributes drawn
    uniformly, each with `sample_delta`; inactive attributes get δ = 0 (they keep the source's value). Seeded."""
    z_sources = _as_matrix(z_sources, "z_sources")
    dims = z_sources.shape[1]
    if not 1 <= max_active <= dims:
        raise ConfigError(f"max_active must be in 1..{dims} (the attributes), got {max_active}")
    rng = random.Random(seed)
    indices, deltas = [], []
    for i, z in enumerate(z_sources.tolist()):
        for _ in range(goals_per_source):
            active = rng.sample(range(dims), rng.randint(1, max_active))
            deltas.append([sample_delta(z[d], rng) if d in active else 0.0 for d in range(dims)])
            indices.append(i)
    return indices, torch.tensor(deltas, dtype=torch.float64).reshape(-1, dims)


def modifier(delta: float) -> str:
    """"much " for |δ| > 0.5, "slightly " for |δ| < 0.2, nothing between (``DirectTemplateInstruction``)."""
    return "much " if abs(delta) > 0.5 else "slightly " if abs(delta) < 0.2 else ""


def _phrase(attribute: Attribute, delta: float) -> str:
    """The official placement: the modifier before an inner "more"/"less" ("use slightly more diverse language"),
    else before the phrase ("much longer")."""
    intent, mod = (attribute.more if delta > 0 else attribute.less), modifier(delta)
    for word in ("more", "less"):
        if not intent.startswith(word) and word in intent:
            return intent.replace(word, mod + word, 1)
    return mod + intent


def direct_prompt(attributes: Sequence[Attribute], delta: Sequence[float]) -> str:
    """"Please rewrite the following, but make it ⟨phrases⟩." plus the official no-explanation sentence, phrases of the
    active attributes (δ ≠ 0) in attribute order (the official code shuffles them), joined as an English list."""
    intents = [_phrase(a, d) for a, d in zip(attributes, delta, strict=True) if d != 0]
    if not intents:
        listed = "as close to the original as possible"
    elif len(intents) <= 2:
        listed = " and ".join(intents)
    else:
        listed = ", ".join(intents[:-1]) + ", and " + intents[-1]
    return f"Please rewrite the following, but make it {listed}.{NO_EXPLAIN}"


def steering_prefix(source: str, words: int = 5) -> str:
    """What the toy model continues: the source's first `words` words (its opening, which keeps the film)."""
    return " ".join(source.split()[:words])


# ---------------------------------------------------------------------------------------------------- report

def _rewrites(model, tokenizer, prompts: list, n: int, max_new_tokens: int, seed: int, progress: bool,
              prefixed: bool) -> list[list[str]]:
    """`n` sampled rewrites per prompt: the prefix plus its continuation (`prefixed`: decoded together, so that a
    tokenizer that drops a leading space does not glue the two), or the completion alone."""
    samples = generate(model, tokenizer, prompts, n=n, max_new_tokens=max_new_tokens, seed=seed, progress=progress)
    texts = [(tokenizer.decode(list(p) + list(c), skip_special_tokens=True) if prefixed else text).strip()
             for p, c, text in zip(samples.prompt_ids, samples.completion_ids, samples.completions, strict=True)]
    return [texts[i * n:(i + 1) * n] for i in range(len(prompts))]


def _choose(attributes, draws: list[list[str]], z_target: torch.Tensor, method: str) -> list[str]:
    """The plain sample (the first draw) or the best of the draws by −‖ẑ − z*‖ (unbinned)."""
    if method == "sample":
        return [d[0] for d in draws]
    chosen = []
    for options, target in zip(draws, z_target, strict=True):
        errors = (map_texts(attributes, options) - target).norm(dim=1)
        chosen.append(options[int(errors.argmin())])
    return chosen


def _scores(z0, target, output) -> dict[str, dict[str, torch.Tensor]]:
    return {"unbinned": steering_metrics(z0, target, output), "binned": steering_metrics(z0, target, output, True)}


def _check(methods, n, n_sources, goals_per_source, max_new_tokens, prompting, prefix_words) -> None:
    for name, value in (("n", n), ("n_sources", n_sources), ("goals_per_source", goals_per_source),
                        ("max_new_tokens", max_new_tokens), ("prefix_words", prefix_words)):
        if value < 1:
            raise ConfigError(f"{name} must be positive, got {value}")
    unknown = [m for m in methods if m not in METHODS]
    if unknown or not methods:
        raise ConfigError(f"methods must be among {', '.join(METHODS)}, got {list(methods)}")
    if prompting not in PROMPTINGS:
        raise ConfigError(f"prompting must be one of {', '.join(PROMPTINGS)}, got {prompting!r}")


def _sources(model, tokenizer, sources, n_sources, max_new_tokens, seed, progress) -> list[str]:
    """The given texts (the first `n_sources`), else `n_sources` reviews the model writes from review openings."""
    if sources is not None:
        if not sources:
            raise ConfigError("sources holds no texts")
        return list(sources)[:n_sources]
    return [d[0] for d in _rewrites(model, tokenizer, review_prompts(n_sources, seed), 1, max_new_tokens, seed,
                                    progress, True)]


def _rows(texts, indices, prompts, inputs, method, z0, target, output, outputs, scores, names) -> list[dict]:
    vec = lambda row: {a: round(float(v), 6) for a, v in zip(names, row, strict=True)}  # noqa: E731
    return [{"source_index": s, "goal_index": j, "method": method, "source": texts[s], "prompt": prompts[j],
             "model_input": inputs[j], "output": outputs[j], "z_source": vec(z0[j]), "z_target": vec(target[j]),
             "z_output": vec(output[j]),
             **{f"{k}{'' if mode == 'unbinned' else '_binned'}": float(v[j]) for mode, d in scores.items()
                for k, v in d.items()}} for j, s in enumerate(indices)]


def steerability_report(model, tokenizer, attributes: Sequence[str | Attribute] = ("length", "sentiment"),
                        methods: Sequence[str] = METHODS, n: int = 16, n_sources: int = 16, goals_per_source: int = 2,
                        max_active: int = 2, max_new_tokens: int = 48, seed: int = 0, progress: bool = False,
                        sources: Sequence[str] | None = None, prompting: str = "prefix", prefix_words: int = 5,
                        binned: bool = True, compare: dict[str, tuple] | None = None) -> Findings:
    """The steerability probe of Chang et al. on `model`: sources (given, or reviews the model writes), goals drawn by
    `sample_probe`, rewrites by each method, and `steering_metrics` summarised unbinned and binned per method.

    The model sees the steering prefix (`steering_prefix`, ``prompting="prefix"``: its continuation after the
    prefix is the rewrite) or the direct prompt and the source as one chat turn (``"direct"``). ``sample``: one
    draw; ``best_of_n``: the best of `n` draws by −‖ẑ − z*‖ (the plain sample is the first of those draws).
    `compare` {label: (model, tokenizer)} adds a plain-sampling method ``sample[label]`` per model (a DPO model, say).
    The chart and the summary line show the means, binned or not (`binned`). The spec's probe has 64 sources
    (19 s of sampling on 2 idle CPU cores with the defaults, minutes when they are busy); 16 keep a run well under
    a minute."""
    _check(methods, n, n_sources, goals_per_source, max_new_tokens, prompting, prefix_words)
    space = [a if isinstance(a, Attribute) else goal_space([a])[0] for a in attributes]
    names = [a.name for a in space]
    texts = _sources(model, tokenizer, sources, n_sources, max_new_tokens, seed, progress)
    z_sources = map_texts(space, texts)
    indices, deltas = sample_probe(z_sources, goals_per_source, min(max_active, len(space)), seed)
    z0 = z_sources[indices]
    target = z0 + deltas
    prompts = [direct_prompt(space, d.tolist()) for d in deltas]
    inputs = [steering_prefix(texts[s], prefix_words) if prompting == "prefix" else
              [{"role": "user", "content": f"{p}\n\n{texts[s]}"}] for s, p in zip(indices, prompts, strict=True)]
    draws = _rewrites(model, tokenizer, inputs, n if "best_of_n" in methods else 1, max_new_tokens, seed + 1,
                      progress, prompting == "prefix")
    chosen = {m: _choose(space, draws, target, m) for m in methods}
    for label, (other, other_tokenizer) in (compare or {}).items():
        chosen[f"sample[{label}]"] = [d[0] for d in _rewrites(other, other_tokenizer, inputs, 1, max_new_tokens,
                                                              seed + 1, progress, prompting == "prefix")]
    by_method, rows = {}, []
    for method, outputs in chosen.items():
        output = map_texts(space, outputs)
        scores = _scores(z0, target, output)
        by_method[method] = {mode: {k: summarize(v) for k, v in d.items()} for mode, d in scores.items()}
        rows += _rows(texts, indices, prompts, inputs, method, z0, target, output, outputs, scores, names)
    return _findings(by_method, rows, space, len(texts), len(indices), n, prompting, binned)


def _findings(by_method: dict, rows: list[dict], space: Sequence[Attribute], n_sources: int, n_goals: int, n: int,
              prompting: str, binned: bool) -> Findings:
    mode = "binned" if binned else "unbinned"
    bars = {m: {k.replace("_", " "): s[mode][k]["mean"] for k in METRICS} for m, s in by_method.items()}
    result = {"attributes": {a.name: {"min": a.low, "max": a.high} for a in space}, "n_sources": n_sources,
              "n_goals": n_goals, "n": n, "prompting": prompting, "headline": mode, "methods": by_method}
    summary = "; ".join(f"{m}: error {b['steering error']:.3f}, miscal {b['miscalibration']:.3f}, ortho "
                        f"{b['orthogonality']:.3f}" for m, b in bars.items())
    return Findings(result, rows, bars=bars, ylabel=f"mean ({mode})", title="Steerability (Chang et al.)",
                    summary=f"steerability ({mode}) — {summary}")
