"""Preference records written as whole transcripts: the prompt taken from what chosen and rejected share, and
``\\n\\nHuman:`` / ``\\n\\nAssistant:`` turns read as chat messages.

As the HH-RLHF transcripts are written, a record has no prompt: ``chosen`` and ``rejected`` each hold the whole
conversation, ``"\\n\\nHuman: … \\n\\nAssistant: …"``, and differ only in the final answer. `split_shared_prefix` takes
their shared beginning as the prompt, cut back so that the completions start right after the last
``\\n\\nAssistant:`` they share; `prompt_messages` and `completion_messages` turn the pieces into chat messages, for
a tokenizer's chat template to render.
"""

from __future__ import annotations

import re

HUMAN = "\n\nHuman:"
ASSISTANT = "\n\nAssistant:"
TURN = re.compile(r"\n\n(Human|Assistant):")
ROLE_OF = {"Human": "user", "Assistant": "assistant"}
Message = dict[str, str]


def common_prefix(a: str, b: str) -> str:
    """The longest string both `a` and `b` start with."""
    end = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        end += 1
    return a[:end]


def split_shared_prefix(chosen: str, rejected: str) -> tuple[str, str, str] | None:
    """(prompt, chosen, rejected): the longest common prefix of the two texts as the prompt, cut back to the end of
    the last ``\\n\\nAssistant:`` inside it when there is one (so each completion is the assistant's answer, from
    just after ``Assistant:``), otherwise the whole common prefix; the rest of each text as its completion.
    None when the texts share no prefix."""
    shared = common_prefix(chosen, rejected)
    if not shared:
        return None
    turn = shared.rfind(ASSISTANT)
    if turn >= 0:
        shared = shared[:turn + len(ASSISTANT)]
    return shared, chosen[len(shared):], rejected[len(shared):]


def _turns(text: str) -> tuple[str, list[tuple[str, str]]]:
    """(the text before the first turn marker, [(role, content) of each marked turn]); contents stripped."""
    pieces = TURN.split(text)
    lead, marked = pieces[0], pieces[1:]
    return lead, [(ROLE_OF[marked[i]], marked[i + 1].strip()) for i in range(0, len(marked), 2)]


def prompt_messages(prompt: str) -> list[Message]:
    """A transcript prompt as messages: each ``\\n\\nHuman:`` turn a user message, each ``\\n\\nAssistant:`` turn an
    assistant message; text before the first marker is the user's; a final empty ``\\n\\nAssistant:`` (where the
    answer would start) is left to the chat template's generation prompt."""
    lead, turns = _turns(prompt)
    messages = [{"role": "user", "content": lead.strip()}] if lead.strip() else []
    messages += [{"role": role, "content": content} for role, content in turns]
    if messages and messages[-1] == {"role": "assistant", "content": ""}:
        messages.pop()
    return messages


def completion_messages(completion: str) -> list[Message]:
    """A transcript completion (what follows ``Assistant:``) as messages: its first message is the assistant's
    answer (possibly empty, as a transcript may hold), later marked turns follow as in `prompt_messages`."""
    lead, turns = _turns(completion)
    return [{"role": "assistant", "content": lead.strip()}] + [{"role": role, "content": content}
                                                               for role, content in turns]
