"""P-Aligner's Monte-Carlo tree search over principle-guided instruction rewrites (Song et al., 2025, "P-Aligner:
Enabling Pre-Alignment of Language Models via Principled Instruction Synthesis"; official code F2-Song/P-Aligner,
``online_synthesis/mcts_utils.py``, ``backend.py``, ``run_synthesis.sh``, ``rules/rule_P-Aligner.json``,
``dump_data/training_data.py``).

A node holds an instruction; the root holds the user's original one. An action is a *principle*: expanding a node
asks an LLM optimiser to rewrite the node's instruction by one principle it has not yet been expanded with (picked
at random). Simulating a node samples responses to the *rewritten* instruction from the policy model and scores
each against the *original* instruction with a reward model; the node's local reward r(v) is their mean. One
iteration is selection → expansion → simulation → backup:

    selection:  from the root, while the node is fully expanded (no untried principle) and has children, go to
                argmax_child  Q(child) + c · √(ln N(parent) / N(child))      (an unvisited child scores +∞)
    Q(v)      = mean( [r(v)] + [Q(u) for u in children(v)] )                  (recursive; not a subtree mean)
    backup:     for v on the path leaf → root:  N(v) += 1,
                R(v) = max( [R(u) for u in children(v)] + [r(v) if v was simulated] )

As in the official code, the root is *not* simulated during the search (its R is the best of its subtree); it is
simulated once after the last iteration so that it can stand in the preference record. The output per prompt
(``dump_data/training_data.py``) ranks every root-to-node path by the end node's local reward: chosen = the highest,
rejected = the lowest, each with its action (principle) sequence. P-Aligner itself is trained by SFT on
original → chosen.

Official behaviours kept, and the switches for the alternatives:

* A child may be expanded with any principle of the sample, including ones already on its path (the official
  ``expand`` only excludes principles used by the node's own children). ``repeat_principles=False`` excludes the
  principles on the path instead, which is the reading of a rewrite *sequence* as distinct edits.
* The root is a chosen/rejected candidate (its path has no actions), so a prompt that no rewrite improves yields
  original → original. ``preference_record(root_candidate=False)`` keeps rewrites only.
* Ties: the official code sorts paths by reward (descending, stable, in pre-order) and takes the first and last, so
  chosen is the *first* best node in pre-order and rejected the *last* worst one.
* The official search has no depth limit; ``max_depth`` is alignlab's addition. A selected node that cannot be
  expanded (at ``max_depth``, or out of principles) is backed up again with its cached local reward.

Defaults come from ``run_synthesis.sh`` (20 iterations, c = 0.1; the config's 10 and 1.0 are overridden there) and
``backend.py`` (3 sampled responses per node). The real rewriter is an instruction-following LLM (GPT-4 in the
paper); `prefix_rewriter` is an offline stand-in that only exercises the search.
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from alignlab.errors import ConfigError

DEFAULT_ITERATIONS = 20
"""MCTS iterations per prompt (``run_synthesis.sh``; the config default of 10 is overridden there)."""

DEFAULT_C = 0.1
"""The exploration weight c of UCB (``run_synthesis.sh``; the config default of 1.0 is overridden there)."""

DEFAULT_RESPONSES = 3
"""Responses the policy samples per simulated instruction; the local reward is their mean score (``backend.py``)."""

TEXT_KEYS = ("text", "content")
"""The keys a listed principle's text may sit under: ours, then the official rule file's."""


@dataclass(frozen=True)
class Principle:
    """One action of the search: a rewriting principle `text` called `name`, in category `group`."""

    name: str
    text: str
    group: str


Rewriter = Callable[[str, Principle], str]
"""(instruction, principle) → the instruction rewritten by that principle (an LLM optimiser)."""

Simulator = Callable[[str, str], float]
"""(rewritten instruction, original instruction) → local reward: the mean score, against the original instruction,
of responses the policy samples to the rewritten one."""


@dataclass(eq=False)
class Node:
    """A search node. `actions` are the principle names applied from the root; `untried` the principles this node
    may still be expanded with; `local_reward` r(v) (None until simulated); `reward` R(v), the best local reward
    in its subtree as kept by `backup` (−∞ until backed up); `options` the principles `expand` hands to this
    node's children as their action set."""

    instruction: str
    actions: tuple[str, ...] = ()
    parent: Node | None = field(default=None, repr=False)
    children: list[Node] = field(default_factory=list)
    untried: list[Principle] = field(default_factory=list)
    visits: int = 0
    local_reward: float | None = None
    reward: float = -math.inf
    options: tuple[Principle, ...] = ()

    @property
    def depth(self) -> int:
        """The number of rewrites from the root (the root's is 0)."""
        return len(self.actions)


def prefix_rewriter(instruction: str, principle: Principle) -> str:
    """The offline stand-in for the LLM optimiser: the principle's text put before the instruction. A real
    P-Aligner needs an instruction-following rewriter LLM that rephrases the instruction by the principle."""
    return f"{principle.text} {instruction}"


def _fail(path: Path, where: str, message: str) -> ConfigError:
    """A ConfigError that names the principles file and the offending key or index."""
    return ConfigError(f"{path}: {where}: {message}" if where else f"{path}: {message}")


def _string(value: Any, path: Path, where: str) -> str:
    """`value` if it is a non-empty string, else a ConfigError at `where`."""
    if not isinstance(value, str) or not value.strip():
        raise _fail(path, where, f"needs a non-empty string, got {value!r}")
    return value.strip()


def _listed_principle(item: Any, group: str | None, path: Path, where: str) -> Principle:
    """A principle from a mapping with ``name`` and ``text`` (or ``content``), and ``group`` unless given."""
    if not isinstance(item, dict):
        raise _fail(path, where, f"a principle needs a mapping with 'name' and 'text', got {item!r}")
    text_key = next((key for key in TEXT_KEYS if key in item), None)
    if "name" not in item or text_key is None:
        raise _fail(path, where, "a principle needs 'name' and 'text' (or 'content')")
    if group is None:
        group = _string(item.get("group"), path, f"{where}.group")
    return Principle(_string(item["name"], path, f"{where}.name"), _string(item[text_key], path, where), group)


def _grouped_principles(document: dict[Any, Any], path: Path) -> list[Principle]:
    """Principles from ``{group: {name: text}}`` or the official ``{group: [{"name", "content"}, ...]}``."""
    principles = []
    for group, entries in document.items():
        where = f"key {group!r}"
        group = _string(group, path, where)
        if isinstance(entries, dict):
            items = [({"name": name, "text": text}, f"{where}.{name}") for name, text in entries.items()]
        elif isinstance(entries, list):
            items = [(item, f"{where}[{index}]") for index, item in enumerate(entries)]
        else:
            raise _fail(path, where, f"a group needs a mapping name → text or a list, got {entries!r}")
        if not items:
            raise _fail(path, where, "the group has no principles")
        principles += [_listed_principle(item, group, path, item_where) for item, item_where in items]
    return principles


def _load_document(path: Path) -> Any:
    """The parsed JSON (``.json``) or YAML (anything else) of a principles file, errors as ConfigError."""
    try:
        text = path.read_text(encoding="utf-8")
        return json.loads(text) if path.suffix.lower() == ".json" else yaml.safe_load(text)
    except OSError as error:
        raise ConfigError(f"{path}: cannot read the principles file: {error}") from error
    except (json.JSONDecodeError, yaml.YAMLError) as error:
        raise ConfigError(f"{path}: cannot parse the principles file: {error}") from error


def read_principles(path: str | Path) -> list[Principle]:
    """The principles of a YAML or JSON file, in file order. Accepted structures: ``{group: {name: text}}``,
    the official rule file's ``{group: [{"name": .., "content": ..}]}``, and a list of
    ``{"name", "text", "group"}``. A bad structure, a duplicate name or no principle at all is a ConfigError
    naming the file and the offending key or index."""
    path = Path(path)
    document = _load_document(path)
    if isinstance(document, dict):
        principles = _grouped_principles(document, path)
    elif isinstance(document, list):
        principles = [_listed_principle(item, None, path, f"index {i}") for i, item in enumerate(document)]
    else:
        raise _fail(path, "", "a principles file needs a mapping of groups or a list of principles")
    if not principles:
        raise _fail(path, "", "the file has no principles")
    seen: set[str] = set()
    for principle in principles:
        if principle.name in seen:
            raise _fail(path, f"principle {principle.name!r}", "the name is given twice")
        seen.add(principle.name)
    return principles


def principles_for(principles: Sequence[Principle], groups: Collection[str] | None) -> list[Principle]:
    """The principles of the given groups (a sample's categories), in their original order; None keeps all.
    An unknown group is a ConfigError (the official code fails on it too)."""
    if groups is None:
        return list(principles)
    unknown = sorted(set(groups) - {principle.group for principle in principles})
    if unknown:
        raise ConfigError(f"unknown principle group(s) {unknown}; known: {sorted({p.group for p in principles})}")
    return [principle for principle in principles if principle.group in groups]


def q_value(node: Node) -> float:
    """Q(v) = mean([r(v)] + [Q(u) for each child u]), recursively (the official ``compute_Q_fn``); r(v) is left
    out while v is unsimulated. A node with neither a local reward nor children has no Q (ValueError)."""
    values = [] if node.local_reward is None else [node.local_reward]
    values += [q_value(child) for child in node.children]
    if not values:
        raise ValueError(f"node {node.actions} has no reward yet: it is neither simulated nor expanded")
    return sum(values) / len(values)


def ucb(child: Node, parent: Node, c: float) -> float:
    """Q(child) + c·√(ln N(parent) / N(child)); +∞ for an unvisited child (N(parent) is floored at 1)."""
    if child.visits == 0:
        return math.inf
    return q_value(child) + c * math.sqrt(math.log(max(parent.visits, 1)) / child.visits)


def select(root: Node, c: float) -> Node:
    """The node to expand: from `root`, descend while the node is fully expanded (no untried principle) and has
    children, each time to the child of highest `ucb` (the first one on a tie, like ``np.argmax``)."""
    node = root
    while not node.untried and node.children:
        parent = node
        node = max(parent.children, key=lambda child: ucb(child, parent, c))
    return node


def expand(
    node: Node, rewrite: Rewriter, rng: random.Random, *, max_depth: int | None = None, repeat_principles: bool = True
) -> Node:
    """Pop a random untried principle of `node`, rewrite the node's instruction by it and append the new child
    (unvisited, unsimulated). The child inherits the node's `options`, less the principles on its path when
    `repeat_principles` is False (the official code keeps them all); its untried list is those options, or empty
    at `max_depth`. An empty rewrite is a ValueError and leaves the principle untried
    (the official code retries such an iteration)."""
    if not node.untried:
        raise ValueError(f"node {node.actions} has no untried principle to expand with")
    index = rng.randrange(len(node.untried))
    principle = node.untried[index]
    instruction = rewrite(node.instruction, principle)
    if not isinstance(instruction, str) or not instruction.strip():
        raise ValueError(f"the rewriter returned no instruction for principle {principle.name!r}")
    del node.untried[index]
    actions = (*node.actions, principle.name)
    options = node.options if repeat_principles else tuple(p for p in node.options if p.name not in actions)
    child = Node(instruction, actions, node, options=options)
    if max_depth is None or child.depth < max_depth:
        child.untried = list(options)
    node.children.append(child)
    return child


def backup(node: Node, local_reward: float) -> None:
    """Record `node`'s local reward r(node) = `local_reward`, then for every node v from it up to the root:
    N(v) += 1 and R(v) = max(children's R, and r(v) if v was simulated) (the official ``MCTSNode.update``)."""
    node.local_reward = float(local_reward)
    current: Node | None = node
    while current is not None:
        current.visits += 1
        rewards = [child.reward for child in current.children]
        if current.local_reward is not None:
            rewards.append(current.local_reward)
        current.reward = max(rewards)
        current = current.parent


def _check_search(principles: Sequence[Principle], iterations: int, max_depth: int | None) -> None:
    """ConfigError unless the search has principles with distinct names, iterations ≥ 0 and max_depth ≥ 1."""
    if not principles:
        raise ConfigError("P-Aligner's search needs at least one principle (check the sample's groups)")
    names = [principle.name for principle in principles]
    if len(set(names)) != len(names):
        raise ConfigError(f"principle names must be distinct, got {names}")
    if iterations < 0:
        raise ConfigError(f"iterations must be ≥ 0, got {iterations}")
    if max_depth is not None and max_depth < 1:
        raise ConfigError(f"max_depth must be ≥ 1 or None, got {max_depth}")


def search(
    original: str,
    principles: Sequence[Principle],
    rewrite: Rewriter,
    simulate: Simulator,
    iterations: int = DEFAULT_ITERATIONS,
    c: float = DEFAULT_C,
    seed: int = 0,
    max_depth: int | None = None,
    *,
    repeat_principles: bool = True,
) -> Node:
    """Run `iterations` rounds of select → expand → simulate → backup from the root `original` and return the root.
    Every new node is simulated once as ``simulate(its instruction, original)``; a selected node that cannot be
    expanded is backed up again with its cached local reward. After the last round the root itself is simulated
    (``simulate(original, original)``), as in the official code; its R is not refreshed. Deterministic given
    `seed` (and deterministic callables)."""
    _check_search(principles, iterations, max_depth)
    rng = random.Random(seed)
    options = tuple(principles)
    root = Node(original, untried=list(options), options=options)
    for _ in range(iterations):
        node = select(root, c)
        if node.untried:
            node = expand(node, rewrite, rng, max_depth=max_depth, repeat_principles=repeat_principles)
            backup(node, simulate(node.instruction, original))
        elif node.local_reward is not None:
            backup(node, node.local_reward)
    root.local_reward = float(simulate(original, original))
    return root


def all_nodes(root: Node) -> list[Node]:
    """Every node of the tree under `root`, in pre-order (a node, then its children's subtrees in order)."""
    nodes, stack = [], [root]
    while stack:
        node = stack.pop()
        nodes.append(node)
        stack.extend(reversed(node.children))
    return nodes


def preference_record(root: Node, *, root_candidate: bool = True) -> dict[str, Any]:
    """The training record of one searched prompt (``dump_data/training_data.py``): among the simulated nodes
    (the root included unless `root_candidate` is False), chosen = the highest local reward (the first in pre-order
    on a tie) and rejected = the lowest (the last in pre-order on a tie, as the official stable sort gives), each
    with its action sequence from the root."""
    nodes = all_nodes(root)
    scored = [(node, node.local_reward) for node in nodes if node.local_reward is not None]
    scored = [(node, reward) for node, reward in scored if root_candidate or node is not root]
    if not scored:
        raise ValueError("the tree has no simulated node to choose from")
    best = max(reward for _, reward in scored)
    worst = min(reward for _, reward in scored)
    chosen = next(node for node, reward in scored if reward == best)
    rejected = [node for node, reward in scored if reward == worst][-1]
    return {
        "prompt": root.instruction,
        "chosen": chosen.instruction,
        "rejected": rejected.instruction,
        "chosen_actions": list(chosen.actions),
        "rejected_actions": list(rejected.actions),
        "chosen_reward": best,
        "rejected_reward": worst,
        "root_reward": root.local_reward,
        "nodes": len(nodes),
    }
