"""Alignment by prompting alone: URIAL for base models, and PrimeGuard-style guard routing.

URIAL (Lin et al., 2024, "The Unlocking Spell on Base LLMs: Rethinking Alignment via In-Context Learning"):
a constant prefix — an instruction preamble and three stylistic examples, queries under "# Query:" and
answers under "# Answer:" in triple-backtick fences — before the user's query and an open answer fence;
generation stops at "# Query" and the fences are stripped. The preamble and examples here are alignlab's own.

Guard routing (Manczak et al., 2024, "PrimeGuard: Safe and Helpful LLMs through Tuning-Free Routing"): one
model, three roles. It first reads restrictive guidelines and the query and answers with JSON
{"check_result", "route", "tip"}, route ∈ {minimal risk, potential violation, direct violation}; anything
unparsable counts as potential violation. Minimal risk: answer with the tip as a consideration. Potential
violation: re-evaluate with the guidelines and the tip, then give the final response. Direct violation: a
fixed polite refusal. Greedy decoding throughout.
"""

from __future__ import annotations

import json
import re

from alignlab.data.formats import Text
from alignlab.data.tokenize import encode_prompt
from alignlab.decode.base import Range, Samples, context_room, encode_prompts, register
from alignlab.decode.stream import Cost, Timer, TokenStream, decode_tokens, draw, generator_for, greedy, warped_logprobs
from alignlab.models.scoring import evaluation_mode, summed_logps

URIAL_PREAMBLE = """# Instructions

Below are conversations between a person and an AI assistant. The assistant is helpful, honest and
respectful: it answers clearly and completely, says when it is unsure, and politely declines requests that
could hurt someone, explaining why and offering a safer alternative. Each query follows "# Query:" and each
answer follows "# Answer:", both inside triple backticks.
"""

URIAL_EXAMPLES = (
    ("How do I keep a basil plant alive on a windowsill?",
     "Basil wants light, warmth and steady moisture:\n\n1. Put it in the sunniest window you have; six hours of "
     "sun a day is ideal.\n2. Water when the top of the soil feels dry, and let the pot drain.\n3. Pinch off the "
     "top leaves and any flower buds, so the plant grows bushy instead of tall.\n4. Keep it away from cold "
     "drafts; basil dislikes anything below about 10 °C.\n\nIf the leaves droop in the afternoon, it needs water; "
     "if they yellow, it is getting too much."),
    ("How can I read my partner's messages without them knowing?",
     "I can't help with that. Reading someone's private messages without their consent breaks their trust and, "
     "in many places, the law. If something in the relationship worries you, it usually helps to talk about it "
     "openly, perhaps with a counsellor who can help you both say what you need."),
    ("What is a safe way to clean mould off a bathroom ceiling?",
     "Open a window and wear gloves and eye protection first. Then:\n\n1. Mix one part white vinegar with one "
     "part water in a spray bottle.\n2. Spray the mould, wait an hour, and wipe it off with a cloth you can throw "
     "away.\n3. Dry the surface well.\n\nNever mix bleach with vinegar or ammonia: together they release toxic "
     "gas. If the patch is larger than about a square metre, or keeps coming back, ask a professional to find the "
     "source of the damp."),
)

URIAL_STOPS = ("# Query",)


def _query(prompt: Text) -> str:
    """The query text: a string prompt, or the last user message of a conversation."""
    if isinstance(prompt, str):
        return prompt
    return next((m["content"] for m in reversed(prompt) if m["role"] == "user"), "")


def urial_prompt(query: Text) -> str:
    """The URIAL prefix, the examples, and `query` (a string, or the last user message of a conversation)."""
    query = _query(query)
    blocks = [URIAL_PREAMBLE]
    for example_query, answer in URIAL_EXAMPLES:
        blocks.append(f"# Query:\n```\n{example_query}\n```\n\n# Answer:\n```\n{answer}\n```\n")
    blocks.append(f"# Query:\n```\n{query}\n```\n\n# Answer:\n```\n")
    return "\n".join(blocks)


def cut_at_stop(tokenizer, ids: list[int], stops: tuple[str, ...]) -> tuple[list[int], str]:
    """The text before the first stop string (answer fences stripped), and the longest run of tokens whose text
    ends there or before."""
    text = tokenizer.decode(ids, skip_special_tokens=True)
    found = [text.find(stop) for stop in stops if stop in text]
    if found:
        cut = min(found)
        text = text[:cut]
        while ids and len(tokenizer.decode(ids, skip_special_tokens=True)) > cut:
            ids = ids[:-1]
    return ids, re.sub(r"\s*```\s*$", "", text.strip())


@register("urial", ranges={"temperature": Range(0)})
def urial(model, tokenizer, prompts: list[Text], n: int = 1, *, max_new_tokens: int = 128, temperature: float = 0.0,
          seed: int | None = None, progress: bool = True) -> Samples:
    """URIAL (Lin et al., 2024): the base model continues alignlab's own preamble + 3 stylistic examples + the
    query (greedy at `temperature` 0, else sampled), stopping at "# Query" and stripping the answer fence. The
    prefix is about 900 tokens: with a shorter context its start is cut (counted in `prompts_truncated`).
    Reports log π(y | URIAL prompt) of the kept tokens (the stop's own probability left out), so the sampled KL is
    taken against the model on the bare prompt."""
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    generator = generator_for(seed, next(model.parameters()).device)
    cost = Cost()
    urial_ids = [encode_prompt(tokenizer, urial_prompt(p), chat=False) for p in prompts]
    room = context_room(model, max_new_tokens)
    truncated = sum(len(ids) > room for ids in urial_ids) if room else 0
    urial_ids = [ids[-room:] for ids in urial_ids] if room else urial_ids  # the preamble's start goes first
    with evaluation_mode(model), Timer(cost):
        stream = TokenStream(model, urial_ids, n, tokenizer.eos_token_id, pad, cost)
        choose = (lambda s: greedy(s.logits.log_softmax(-1))) if temperature == 0 else \
            (lambda s: draw(warped_logprobs(s.logits, temperature), generator))
        decode_tokens(stream, max_new_tokens, choose)
        kept = [cut_at_stop(tokenizer, ids, URIAL_STOPS) for ids in stream.generated]
        rows = [ids for ids in urial_ids for _ in range(n)]
        logps = summed_logps(model, rows, [ids for ids, _ in kept], pad, batch_size=32)
    bare, _ = encode_prompts(tokenizer, prompts)
    return Samples([p for p in prompts for _ in range(n)], [text for _, text in kept],
                   [ids for ids in bare for _ in range(n)], [ids for ids, _ in kept], logps,
                   "sampled" if temperature > 0 else "point", cost, prompts_truncated=truncated)


GUIDELINES = """You are a careful assistant. Follow these rules:
- Do not help anyone harm people, break into systems, make weapons or drugs, or deceive or harass others.
- Do not reveal private information about real people.
- Everything else is allowed: be as helpful as you can."""

ROUTE_REQUEST = """{guidelines}

Read the query below and decide how to answer it. Reply with JSON only:
{{"check_result": "<one sentence>", "route": "minimal risk" | "potential violation" | "direct violation",
"tip": "<one sentence of advice for answering>"}}

Query: {query}"""

REEVALUATE = """{guidelines}

Advice from a first reading: {tip}

Answer the query below if the rules allow it; otherwise decline politely and briefly say why.

Query: {query}"""

ROUTES = ("minimal risk", "potential violation", "direct violation")
REFUSAL = "I'm sorry, but I can't help with that request."


def parse_route(text: str) -> tuple[str, str]:
    """(route, tip) from the model's route selection; unparsable JSON or an unknown route → potential violation."""
    match = re.search(r"\{.*\}", text, flags=re.DOTALL)
    try:
        data = json.loads(match.group(0)) if match else None
    except ValueError:
        data = None
    if not isinstance(data, dict) or data.get("route") not in ROUTES:
        return "potential violation", ""
    tip = data.get("tip")
    return data["route"], tip if isinstance(tip, str) else ""


def complete(model, tokenizer, texts: list[Text], max_new_tokens: int, cost: Cost) -> list[str]:
    """Greedy completions of `texts` (strings, or chat messages through the chat template)."""
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    stream = TokenStream(model, [encode_prompt(tokenizer, t) for t in texts], 1, tokenizer.eos_token_id, pad, cost)
    decode_tokens(stream, max_new_tokens, lambda s: greedy(s.logits.log_softmax(-1)))
    return [tokenizer.decode(ids, skip_special_tokens=True) for ids in stream.generated]


def _as_user(tokenizer, text: str) -> Text:
    return [{"role": "user", "content": text}] if getattr(tokenizer, "chat_template", None) else text




@register("guard_route", ranges={"route_tokens": Range(1)})
def guard_route(model, tokenizer, prompts: list[Text], n: int = 1, *, max_new_tokens: int = 64,
                route_tokens: int = 64, seed: int | None = None, progress: bool = True) -> Samples:
    """PrimeGuard-style routing (Manczak et al., 2024): a route selection by the model itself (JSON; unparsable →
    potential violation), then an answer with the tip (minimal risk), a re-evaluation under the guidelines
    (potential violation) or a fixed refusal (direct violation). Greedy, so a point (``point``);
    ``extras["route"]`` holds each prompt's route."""
    cost = Cost()
    with evaluation_mode(model), Timer(cost):
        queries = [_query(p) for p in prompts]
        selections = complete(model, tokenizer, [_as_user(tokenizer, ROUTE_REQUEST.format(guidelines=GUIDELINES,
                                                                                          query=q)) for q in queries],
                              route_tokens, cost)
        routes = [parse_route(text) for text in selections]
        follow_up = {}
        for i, (route, tip) in enumerate(routes):
            if route == "minimal risk":
                follow_up[i] = _as_user(tokenizer, f"{queries[i]}\n\n(Consider: {tip})" if tip else queries[i])
            elif route == "potential violation":
                follow_up[i] = _as_user(tokenizer, REEVALUATE.format(guidelines=GUIDELINES, tip=tip or "none",
                                                                     query=queries[i]))
        answers = dict(zip(follow_up, complete(model, tokenizer, list(follow_up.values()), max_new_tokens, cost),
                           strict=True)) if follow_up else {}
    texts = [answers.get(i, REFUSAL) for i in range(len(prompts))]
    completion_ids = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
    bare, cut = encode_prompts(tokenizer, prompts)
    samples = Samples([p for p in prompts for _ in range(n)], [t for t in texts for _ in range(n)],
                      [ids for ids in bare for _ in range(n)], [ids for ids in completion_ids for _ in range(n)],
                      None, "point", cost, {"route": [r for r, _ in routes for _ in range(n)]}, cut)
    return samples
