"""P-Aligner's MCTS (Song et al., 2025): UCB, Q and backup on hand-built trees with hand-computed numbers, the
preference record's chosen/rejected, the principles file formats, determinism, and a search that finds a planted
pair of principles under deterministic rewrites."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import pytest

from alignlab.data.p_aligner import (
    DEFAULT_C,
    DEFAULT_ITERATIONS,
    DEFAULT_RESPONSES,
    Node,
    Principle,
    all_nodes,
    backup,
    expand,
    preference_record,
    prefix_rewriter,
    principles_for,
    q_value,
    read_principles,
    search,
    select,
    ucb,
)
from alignlab.errors import ConfigError

EXAMPLE_PRINCIPLES = Path(__file__).resolve().parents[2] / "examples" / "data" / "principles.yaml"


def tagged(count: int) -> list[Principle]:
    """Principles p1..p<count> whose rewrite appends the tag [pk]."""
    return [Principle(f"p{k}", f"tag {k}", "g") for k in range(1, count + 1)]


def append_tag(instruction: str, principle: Principle) -> str:
    return f"{instruction} [{principle.name}]"


def child_of(parent: Node, name: str, local: float | None, visits: int = 1) -> Node:
    """A hand-made child (its R is its local reward, as after one backup)."""
    child = Node(f"{parent.instruction} [{name}]", (*parent.actions, name), parent, visits=visits, local_reward=local)
    child.reward = -math.inf if local is None else local
    parent.children.append(child)
    return child


def test_defaults_are_the_run_script_values():
    assert (DEFAULT_ITERATIONS, DEFAULT_C, DEFAULT_RESPONSES) == (20, 0.1, 3)


def test_ucb_matches_hand_computed_values():
    parent = Node("x", visits=10)
    a = child_of(parent, "a", 0.5, visits=2)
    b = child_of(parent, "b", 0.2, visits=5)
    # 0.5 + 0.1·√(ln 10 / 2) = 0.5 + 0.1·√1.1512925 = 0.5 + 0.10729829
    assert ucb(a, parent, 0.1) == pytest.approx(0.60729829, rel=1e-7)
    # 0.2 + 0.1·√(ln 10 / 5) = 0.2 + 0.1·√0.4605170 = 0.2 + 0.06786140
    assert ucb(b, parent, 0.1) == pytest.approx(0.26786140, rel=1e-7)
    assert ucb(a, parent, 1.0) == pytest.approx(1.5729829, rel=1e-7)
    assert ucb(child_of(parent, "c", None, visits=0), parent, 0.1) == math.inf


def test_select_picks_the_unvisited_child_then_follows_ucb():
    parent = Node("x", visits=9)
    a = child_of(parent, "a", 0.5, visits=8)
    b = child_of(parent, "b", 0.3, visits=1)
    unvisited = child_of(parent, "c", None, visits=0)
    assert select(parent, 0.1) is unvisited
    parent.children.remove(unvisited)
    # c = 0.1: a = 0.5 + 0.1·√(ln 9 / 8) = 0.55240735; b = 0.3 + 0.1·√(ln 9) = 0.44823038 → a
    assert select(parent, 0.1) is a
    # c = 1: a = 1.02407354; b = 1.7823038 → b
    assert select(parent, 1.0) is b


def test_select_stops_at_a_node_with_untried_principles():
    root = Node("x", visits=3, untried=[Principle("u", "u", "g")])
    child_of(root, "a", 0.9, visits=2)
    assert select(root, 0.1) is root
    root.untried.clear()
    leaf = root.children[0]
    assert select(root, 0.1) is leaf  # fully expanded root, leaf without children: stop there


def test_q_is_the_recursive_mean_not_the_subtree_mean():
    x = Node("x", local_reward=1.0)
    y = child_of(x, "y", 0.0)
    child_of(y, "z", 0.6)
    child_of(x, "w", 0.5)
    # Q(z) = 0.6, Q(y) = (0.0 + 0.6) / 2 = 0.3, Q(w) = 0.5, Q(x) = (1.0 + 0.3 + 0.5) / 3 = 0.6
    assert q_value(y) == pytest.approx(0.3)
    assert q_value(x) == pytest.approx(0.6)  # the plain subtree mean would be 2.1 / 4 = 0.525
    unsimulated_root = Node("r")
    unsimulated_root.children.append(x)
    assert q_value(unsimulated_root) == pytest.approx(0.6)  # r(root) left out
    with pytest.raises(ValueError):
        q_value(Node("nothing yet"))


def test_backup_keeps_the_max_and_counts_visits_on_the_path_only():
    root = Node("x", visits=2)
    a = child_of(root, "a", 0.3)
    sibling = child_of(root, "s", 0.9)
    root.reward = 0.9
    leaf = child_of(a, "b", None, visits=0)
    backup(leaf, 0.8)
    assert (leaf.local_reward, leaf.reward, leaf.visits) == (0.8, 0.8, 1)
    assert (a.reward, a.visits) == (0.8, 2)  # max(child 0.8, own 0.3)
    assert (root.reward, root.visits) == (0.9, 3)  # max(children 0.8, 0.9); the root is unsimulated
    assert (sibling.reward, sibling.visits) == (0.9, 1)
    worse = child_of(a, "c", None, visits=0)
    backup(worse, 0.1)
    assert (a.reward, a.visits, root.visits) == (0.8, 3, 4)
    lone = Node("y")
    only = child_of(lone, "a", None, visits=0)
    backup(only, 0.2)
    assert lone.reward == 0.2  # an unsimulated node takes its children's best


def test_expand_pops_one_untried_principle_and_rewrites():
    principles = tagged(3)
    root = Node("x", untried=list(principles), options=tuple(principles))
    child = expand(root, prefix_rewriter, random.Random(0))
    used = child.actions[0]
    assert child.instruction == f"tag {used[1:]} x"
    assert child.parent is root and root.children == [child]
    assert [p.name for p in root.untried] == [p.name for p in principles if p.name != used]
    assert child.untried == principles and (child.visits, child.local_reward) == (0, None)
    strict = expand(root, append_tag, random.Random(0), repeat_principles=False, max_depth=2)
    assert strict.actions[0] not in {p.name for p in strict.untried}
    assert expand(strict, append_tag, random.Random(0), max_depth=2).untried == []
    left = list(root.untried)
    with pytest.raises(ValueError, match="no instruction"):
        expand(root, lambda instruction, principle: "", random.Random(0))
    assert root.untried == left  # a failed rewrite uses up no principle


def test_preference_record_takes_max_and_min_local_reward_with_their_actions():
    root = Node("orig", local_reward=0.4)
    a = child_of(root, "a", 0.9)
    b = child_of(root, "b", 0.1)
    child_of(a, "c", 0.9)  # ties with a: chosen is the first in pre-order (a)
    child_of(b, "d", 0.1)  # ties with b: rejected is the last in pre-order (b → d)
    record = preference_record(root)
    assert record == {
        "prompt": "orig",
        "chosen": "orig [a]",
        "rejected": "orig [b] [d]",
        "chosen_actions": ["a"],
        "rejected_actions": ["b", "d"],
        "chosen_reward": 0.9,
        "rejected_reward": 0.1,
        "root_reward": 0.4,
        "nodes": 5,
    }
    root.local_reward = 0.0
    assert preference_record(root)["rejected_actions"] == []  # the root is a candidate
    assert preference_record(root, root_candidate=False)["rejected_actions"] == ["b", "d"]


def test_all_nodes_is_pre_order():
    root = Node("r")
    a = child_of(root, "a", 0.0)
    a1 = child_of(a, "a1", 0.0)
    b = child_of(root, "b", 0.0)
    assert all_nodes(root) == [root, a, a1, b]


@pytest.mark.parametrize("count", [3, 4, 5, 6])
def test_search_finds_the_planted_pair_under_a_graded_reward(count):
    planted = ("[p2]", f"[p{min(5, count)}]")
    calls = []

    def reward(instruction: str, original: str) -> float:
        calls.append((instruction, original))
        return 0.5 * (planted[0] in instruction) + 0.5 * (planted[1] in instruction)

    for seed in range(3):
        calls.clear()
        root = search("Review the film.", tagged(count), append_tag, reward, seed=seed)
        record = preference_record(root)
        assert record["chosen_reward"] == 1.0
        assert {f"[{action}]" for action in record["chosen_actions"]} >= set(planted)
        assert len(calls) == record["nodes"]  # every node simulated once, the root last
        assert calls[-1] == ("Review the film.", "Review the film.")
        assert {original for _, original in calls} == {"Review the film."}
        assert root.visits == DEFAULT_ITERATIONS and root.local_reward == 0.0


def test_search_finds_the_planted_pair_under_a_binary_reward_with_three_actions():
    # 3 root children, then their 9 grandchildren (all unvisited ties spread by UCB) within 12 iterations.
    def reward(instruction: str, original: str) -> float:
        return float("[p2]" in instruction and "[p3]" in instruction)

    for seed in range(5):
        record = preference_record(search("Review it.", tagged(3), append_tag, reward, seed=seed))
        assert record["chosen_reward"] == 1.0 and sorted(record["chosen_actions"]) == ["p2", "p3"]


def test_search_options_depth_limit_and_refusals():
    def reward(instruction: str, original: str) -> float:
        return len(instruction) / 100

    root = search("x", tagged(3), append_tag, reward, iterations=10, max_depth=1)
    assert len(all_nodes(root)) == 4 and root.visits == 10  # the leaves are revisited, not re-simulated
    strict = search("x", tagged(3), append_tag, reward, iterations=30, repeat_principles=False)
    assert max(node.depth for node in all_nodes(strict)) == 3
    assert all(len(set(node.actions)) == len(node.actions) for node in all_nodes(strict))
    assert len(all_nodes(strict)) == 16  # 1 + 3 + 6 + 6: the whole tree of distinct sequences
    assert len(all_nodes(search("x", tagged(2), append_tag, reward, iterations=0))) == 1
    for bad in ({"principles": []}, {"max_depth": 0}, {"iterations": -1}):
        arguments = {"principles": tagged(2), **bad}
        with pytest.raises(ConfigError):
            search("x", rewrite=append_tag, simulate=reward, **arguments)


def snapshot(root: Node) -> list[tuple]:
    return [(n.actions, n.instruction, n.visits, n.local_reward, n.reward) for n in all_nodes(root)]


def test_search_is_deterministic_under_its_seed():
    def reward(instruction: str, original: str) -> float:
        return sum(map(ord, instruction)) % 7 / 7

    first = snapshot(search("x", tagged(6), append_tag, reward, seed=3))
    assert snapshot(search("x", tagged(6), append_tag, reward, seed=3)) == first
    assert any(snapshot(search("x", tagged(6), append_tag, reward, seed=s)) != first for s in (4, 5))


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_read_principles_accepts_grouped_listed_and_official_structures(tmp_path):
    grouped = write(tmp_path, "p.yaml", "tone:\n  warm: Be warm.\n  kind: Be kind.\ndetail:\n  plot: Cover the plot.\n")
    assert read_principles(grouped) == [
        Principle("warm", "Be warm.", "tone"),
        Principle("kind", "Be kind.", "tone"),
        Principle("plot", "Cover the plot.", "detail"),
    ]
    listed = [{"name": "warm", "text": "Be warm.", "group": "tone"}, {"name": "plot", "text": "Plot.", "group": "d"}]
    assert read_principles(write(tmp_path, "l.json", json.dumps(listed)))[1] == Principle("plot", "Plot.", "d")
    official = {
        "Helpfulness": [{"name": "Tone", "content": "kinder wording"}],
        "Math": [{"name": "Hint", "content": "h"}],
    }
    principles = read_principles(write(tmp_path, "rule.json", json.dumps(official)))
    assert principles == [Principle("Tone", "kinder wording", "Helpfulness"), Principle("Hint", "h", "Math")]
    assert principles_for(principles, ["Math"]) == [Principle("Hint", "h", "Math")]
    assert principles_for(principles, None) == principles
    with pytest.raises(ConfigError, match="Coding"):
        principles_for(principles, ["Coding"])


def test_the_example_principles_file_reads_as_prefixes():
    principles = read_principles(EXAMPLE_PRINCIPLES)
    assert len(principles) == 6 and len({p.group for p in principles}) == 3
    assert prefix_rewriter("Review Alien.", principles[0]) == f"{principles[0].text} Review Alien."


@pytest.mark.parametrize(
    ("name", "text", "where"),
    [
        ("top.yaml", "just a string\n", "mapping of groups"),
        ("group.yaml", "tone: 3\n", "key 'tone'"),
        ("item.json", json.dumps([{"name": "a", "text": "t", "group": "g"}, {"name": "b"}]), "index 1"),
        ("official.json", json.dumps({"Math": [{"name": "Hint"}]}), r"key 'Math'\[0\]"),
        ("blank.yaml", "tone:\n  warm: ''\n", "key 'tone'.warm"),
        ("twice.yaml", "a:\n  warm: x\nb:\n  warm: y\n", "principle 'warm'"),
        ("emptygroup.yaml", "tone: {}\n", "key 'tone'"),
        ("empty.yaml", "{}\n", "no principles"),
        ("broken.json", "{not json", "cannot parse"),
    ],
)
def test_read_principles_refuses_bad_files_naming_file_and_key(tmp_path, name, text, where):
    path = write(tmp_path, name, text)
    with pytest.raises(ConfigError, match=where) as caught:
        read_principles(path)
    assert str(path) in str(caught.value)
