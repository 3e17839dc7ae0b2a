"""`alignlab decode CONFIG`: several decoding methods on one prompt set, one reward, one reward–KL frontier.

Every method's KL(π_method ‖ π_ref) is reported with its kind (π_ref is the model being decoded):
``sampled`` — mean of log π_method(y) − log π_ref(y) over its samples (the method reports log π_method(y),
the engine scores log π_ref(y)); ``estimate`` — best-of-N's Beirami et al. estimate, beside its bound
log N − (N − 1)/N; ``point`` — a deterministic method's −log π_ref(y). Each method's samples and summary are
written as soon as it finishes, so a killed run resumes (``--resume``) with the methods still to do.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import inspect
import json
import re
from dataclasses import dataclass, field
from typing import Any

import torch
import yaml

from alignlab import decode, rewards
from alignlab.commands.options import add_quiet_option, add_set_option
from alignlab.config import ModelConfig, build_dataclass, load_yaml
from alignlab.data.prompts import PromptsConfig, read_prompts
from alignlab.errors import ConfigError
from alignlab.evaluate.frontier import plot_frontier, sample_logps
from alignlab.models.exactness import layout_note
from alignlab.models.loading import load_model, load_tokenizer
from alignlab.report.html import write_report_safely
from alignlab.run_folder import RunFolder

COMMON = ("n", "seed", "progress", "max_new_tokens")
LABEL = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
"""A method label: it names files (methods/LABEL.jsonl), so nothing that leaves the folder or nests in it."""
"""Settings of the config that every method gets unless its entry sets them."""


@dataclass
class MethodConfig:
    name: str = "sample"
    params: dict[str, Any] = field(default_factory=dict)
    label: str | None = None
    """How the method is named in the outputs (default: its name, numbered when it repeats)."""


@dataclass
class DecodeConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    draft: ModelConfig | None = None
    """The draft model of `speculative` (it must share the model's tokenizer)."""
    baseline: ModelConfig | None = None
    """`tq_star`'s baseline: a model already aligned to the reward (same tokenizer); the model itself if not given."""
    prompts: PromptsConfig = field(default_factory=PromptsConfig)
    reward: str | dict[str, Any] = "sentiment"
    """The reward every method is judged by and the guided methods use: a name or ``{name: ..., params}``."""
    methods: list[MethodConfig] = field(default_factory=lambda: [MethodConfig()])
    n: int = 4
    """Completions per prompt for each method."""
    max_new_tokens: int = 32
    seed: int = 0
    progress: bool = True
    out_dir: str = "runs/decode"


def _method_entry(entry: Any, where: str) -> dict:
    """``{name: best_of_n, candidates: 8, label: bo8}`` → ``{name, label, params: {candidates: 8}}``."""
    if isinstance(entry, str):
        return {"name": entry}
    if not isinstance(entry, dict):
        raise ConfigError(f"{where}: expected a name or a mapping like {{name: best_of_n, candidates: 8}}")
    entry = dict(entry)
    out = {key: entry.pop(key) for key in ("name", "label") if key in entry}
    out["params"] = {**(entry.pop("params", None) or {}), **entry}
    return out


def decode_config(data: dict) -> DecodeConfig:
    """A `DecodeConfig` from plain data, every method and parameter checked (the reward is built by `prepare`)."""
    data = dict(data or {})
    methods = data.get("methods", ["sample"])
    if not isinstance(methods, list) or not methods:
        raise ConfigError("methods: expected a non-empty list of decoding methods")
    data["methods"] = [_method_entry(entry, f"methods[{i}]") for i, entry in enumerate(methods)]
    config = build_dataclass(DecodeConfig, data, "")
    for key in ("n", "max_new_tokens"):
        if getattr(config, key) < 1:
            raise ConfigError(f"{key} must be at least 1, got {getattr(config, key)}")
    if not config.prompts.path:
        raise ConfigError("prompts.path: name the prompt file")
    if config.prompts.limit is not None and config.prompts.limit < 1:
        raise ConfigError(f"prompts.limit must be at least 1 (or left out for every prompt), got "
                          f"{config.prompts.limit}")
    if not 0 <= config.seed < 2**63:
        raise ConfigError(f"seed must be in [0, 2^63), got {config.seed}")
    labels = []
    for method in config.methods:
        if method.label is not None and not LABEL.fullmatch(method.label):
            raise ConfigError(f"methods: label {method.label!r} names the method's files in the run folder: use "
                              "letters, digits, '.', '_' and '-' only, starting with a letter or digit")
        decode.get(method.name, **{k: v for k, v in method.params.items() if k not in COMMON})
        decode.check_values(method.name, method.params)  # the settings every method shares too (n, seed, …)
        label = method.label or method.name
        labels.append(label if label not in labels else f"{label}-{sum(x.startswith(label) for x in labels) + 1}")
    for method, label in zip(config.methods, labels, strict=True):
        method.label = label
    if any("draft" in decode.spec(m.name).models for m in config.methods) and config.draft is None:
        raise ConfigError("a method needs a draft model: set draft.path")
    return config


def method_arguments(config: DecodeConfig, method: MethodConfig, reward, models: dict) -> dict:
    """The method's parameters with the config's common settings, the reward and the further models it takes."""
    spec = decode.spec(method.name)
    taken = inspect.signature(spec.fn).parameters
    arguments = {key: getattr(config, key) for key in COMMON if key in taken}
    arguments.update(method.params)
    if spec.needs_reward or "reward" in taken:
        arguments["reward"] = reward
    for name in spec.models:
        if models.get(name) is not None:
            arguments[name] = models[name]
    return arguments


def summarise(samples, scores: torch.Tensor, ref_logps: torch.Tensor, method: MethodConfig) -> dict:
    """Mean reward, KL with its kind (and bound for best-of-N), cost."""
    point = {"method": method.name, "label": method.label, "params": method.params,
             "reward": scores.mean().item(), "kl_kind": samples.kl_kind, "samples": len(samples),
             "prompts_truncated": samples.prompts_truncated, "cost": samples.cost.as_dict()}
    if samples.kl_kind == "sampled":
        point["kl"] = (samples.logps - ref_logps).mean().item()
    elif samples.kl_kind == "estimate":  # the method's own per-sample estimate (and bound, where it has one)
        point["kl"] = sum(samples.extras["kl"]) / len(samples.extras["kl"])
        if "kl_bound" in samples.extras:
            point["kl_bound"] = max(samples.extras["kl_bound"])
    else:
        point["kl"] = (-ref_logps).mean().item()
    if "value_fit" in samples.extras:
        point["value_fit"] = samples.extras["value_fit"]
    if "accepted" in samples.extras:
        calls = [count for counts in samples.extras["accepted"] for count in counts]
        point["accepted_per_target_call"] = sum(calls) / max(1, len(calls))
    return point


SHARED_SETTINGS = ("model", "draft", "baseline", "prompts", "reward", "n", "max_new_tokens", "seed")
"""What every method of a decoding run shares: a resumed run must keep them."""


def check_resumed_decoding(config: DecodeConfig, saved: dict) -> None:
    new = as_dict(config)
    changed = [key for key in SHARED_SETTINGS if saved.get(key) != new.get(key)]
    if changed:
        raise ConfigError(f"--resume keeps the methods decoded earlier, and the saved config.yaml differs in "
                          f"{', '.join(changed)}: resume with the same settings, or --overwrite")


PROMPTS_FINGERPRINT = "prompts.json"
"""The prompts a decoding run read (count and sha256), so that --resume can tell a changed prompt file."""


def prompts_fingerprint(prompts: list) -> dict:
    return {"prompts": len(prompts), "sha256": hashlib.sha256(json.dumps(prompts).encode()).hexdigest()}


def check_resumed_prompts(prompts: list, saved: dict) -> None:
    """--resume keeps methods decoded on the earlier prompts: refuse a prompt file whose content changed."""
    if prompts_fingerprint(prompts) != saved:
        raise ConfigError(f"--resume keeps the methods decoded earlier, and the prompts differ from the ones they were "
                          f"decoded on ({saved.get('prompts')} then, {len(prompts)} now, or changed text): resume with "
                          "the same prompt file, or --overwrite")


def run_decode(config: DecodeConfig, resume: bool = False, log=print, overwrite: bool = False) -> dict:
    """Decode `config.prompts` with every method; write samples, a summary and the frontier to `config.out_dir`."""
    folder = RunFolder(config.out_dir)
    folder.check_usable(resume, overwrite)
    if resume and folder.file("config.yaml").is_file():
        check_resumed_decoding(config, yaml.safe_load(folder.file("config.yaml").read_text()) or {})
    reward = rewards.from_config(config.reward)
    prompts = read_prompts(config.prompts)
    if resume and folder.file(PROMPTS_FINGERPRINT).is_file():
        check_resumed_prompts(prompts, json.loads(folder.file(PROMPTS_FINGERPRINT).read_text()))
    tokenizer = load_tokenizer(config.model.path, config.model.trust_remote_code)
    dtype = "float32" if config.model.dtype == "auto" else config.model.dtype
    model = load_model(config.model.path, dtype, config.model.trust_remote_code)
    check_context(model, config)
    note = layout_note(model)  # how the engine scores it exactly (the reference log-probs of every method)
    if note:
        log(note)
    models = {}
    for name in ("draft", "baseline"):
        section = getattr(config, name)
        if section is None:
            continue
        if load_tokenizer(section.path, section.trust_remote_code).get_vocab() != tokenizer.get_vocab():
            raise ConfigError(f"{name} model {section.path} has another tokenizer than {config.model.path}")
        models[name] = load_model(section.path, dtype, section.trust_remote_code)
    folder.create(overwrite)
    try:
        return _decode_methods(config, folder, model, tokenizer, prompts, reward, models, log)
    finally:
        folder.unlock()


def _decode_methods(config: DecodeConfig, folder: RunFolder, model, tokenizer, prompts: list, reward, models: dict,
                    log) -> dict:
    done = {path.stem: json.loads(path.read_text()) for path in sorted(folder.path.glob("methods/*.json"))}
    for method in config.methods:
        kept = done.get(method.label)
        if kept is not None and (kept["method"], kept["params"]) != (method.name, method.params):
            raise ConfigError(f"{method.label} was decoded earlier as {kept['method']} with {kept['params']}, now "
                              f"{method.name} with {method.params}: give it another label, or --overwrite")
    folder.write_yaml("config.yaml", as_dict(config))
    folder.write_json(PROMPTS_FINGERPRINT, prompts_fingerprint(prompts))
    (folder.path / "methods").mkdir(exist_ok=True)
    log(f"{len(prompts)} prompts, {len(config.methods)} methods, reward {getattr(reward, 'name', reward)}")
    for method in config.methods:
        if method.label in done:
            log(f"{method.label}: done earlier, kept")
            continue
        log(f"{method.label}: decoding")
        samples = decode.get(method.name)(model, tokenizer, prompts, **method_arguments(config, method, reward, models))
        scores = reward.score(samples.prompts, samples.completions).float()
        refuse_non_finite_rewards(scores, method.label, reward)
        ref_logps = sample_logps(model, samples, tokenizer.pad_token_id or 0)
        done[method.label] = summarise(samples, scores, ref_logps, method)
        rows = [{"method": method.label, "prompt": samples.prompts[i], "completion": samples.completions[i],
                 "reward": round(float(scores[i]), 4), "ref_logp": round(float(ref_logps[i]), 4),
                 "logp": None if samples.logps is None else round(float(samples.logps[i]), 4)}
                for i in range(len(samples))]
        folder.write_jsonl(f"methods/{method.label}.jsonl", rows)
        folder.write_json(f"methods/{method.label}.json", done[method.label])
        log(f"{method.label}: reward {done[method.label]['reward']:.3f}, KL {done[method.label]['kl']:.3f} "
            f"({samples.kl_kind}), {samples.cost.seconds:.1f} s")
    return write_outputs(folder, config, done)


def check_context(model, config: DecodeConfig) -> None:
    """ConfigError when a method's `max_new_tokens` leaves no room for a prompt in the model's context."""
    context = getattr(model.config, "max_position_embeddings", None)
    longest = max(int(m.params.get("max_new_tokens", config.max_new_tokens)) for m in config.methods)
    if context is not None and longest >= context:
        raise ConfigError(f"max_new_tokens {longest} leaves no room for the prompt in {config.model.path}'s "
                          f"{context}-token context: at most {context - 1}, and less for long prompts")


def refuse_non_finite_rewards(scores: torch.Tensor, label: str, reward) -> None:
    """ConfigError when the reward gave a NaN or infinite score: a mean over them would be noise, not a result."""
    bad = int((~torch.isfinite(scores)).sum())
    if bad:
        raise ConfigError(f"{label}: the reward {getattr(reward, 'name', reward)} gave {bad} of {len(scores)} scores "
                          "that are not finite numbers (a NaN model or weight?), so no mean reward can be reported")


def write_outputs(folder: RunFolder, config: DecodeConfig, done: dict) -> dict:
    """samples.jsonl (every method), summary.json and frontier.png, in the config's method order."""
    labels = [m.label for m in config.methods]
    with folder.file("samples.jsonl").open("w") as out:
        for label in labels:
            out.write(folder.file(f"methods/{label}.jsonl").read_text())
    summary = {"methods": [done[label] for label in labels], "reward": config.reward,
               "model": config.model.path, "prompts": config.prompts.path,
               "kl": "KL(pi_method || pi_ref) in nats per completion; kl_kind says how it is known"}
    folder.write_json("summary.json", summary)
    points = {f"{label} ({done[label]['kl_kind']})": done[label] for label in labels}
    plot_frontier(points, {}, folder.file("frontier.png"), f"Decoding methods on {config.model.path}")
    write_report_safely(folder.path)
    return summary


def as_dict(config: DecodeConfig) -> dict:
    data = dataclasses.asdict(config)
    data["methods"] = [{"name": m.name, **({"label": m.label} if m.label else {}), **m.params}
                       for m in config.methods]
    return data


def load_decode_config(path: str | None, overrides: list[str] | None = None) -> DecodeConfig:
    return decode_config(load_yaml(path, overrides))


def format_decode_table(summary: dict) -> str:
    lines = [f"{'method':<20} {'reward':>8} {'KL (nats)':>10} {'kind':<9} {'tokens/s':>9}"]
    for point in summary["methods"]:
        bound = f" (bound {point['kl_bound']:.3f})" if "kl_bound" in point else ""
        rate = point["cost"]["tokens_per_s"] or 0
        lines.append(f"{point['label']:<20} {point['reward']:>8.3f} {point['kl']:>10.3f} {point['kl_kind']:<9} "
                     f"{rate:>9.0f}{bound}")
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="YAML config (see examples/decode.yaml)")
    add_set_option(parser, "n=8")
    parser.add_argument("--out", help="output folder (overrides out_dir)")
    parser.add_argument("--resume", action="store_true", help="keep the methods an earlier run finished")
    parser.add_argument("--overwrite", action="store_true", help="clear the output folder first")
    add_quiet_option(parser)


def run(args: argparse.Namespace) -> None:
    config = load_decode_config(args.config, args.set)
    if args.out:
        config.out_dir = args.out
    if args.quiet:
        config.progress = False
    summary = run_decode(config, resume=args.resume, overwrite=args.overwrite)
    print(format_decode_table(summary))
