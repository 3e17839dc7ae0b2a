"""Fixtures of the online tests: sixteen review prompts to sample from."""

import json

import pytest


@pytest.fixture(scope="module")
def prompts_file(tmp_path_factory):
    from alignlab.assets.corpus import review_prompts

    path = tmp_path_factory.mktemp("prompts") / "prompts.jsonl"
    path.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in review_prompts(16, seed=5)))
    return path
