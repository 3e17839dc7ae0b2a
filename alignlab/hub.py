"""Hub probes shared by model and data loading: is a name a hub id, is the hub reachable, is offline mode set.

Kept apart so that `alignlab.data` and `alignlab.models` both use them without importing each other.
"""

from __future__ import annotations

import functools
import os
import threading
import urllib.error
import urllib.request

HUB_PROBE_SECONDS = 3.0
OFFLINE_VARIABLES = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")


def is_hub_id(name: str) -> bool:
    """Whether `name` is a valid hub repository id (``name`` or ``owner/name``; dots allowed, as in
    ``Qwen/Qwen2.5-0.5B``)."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(name)
    except HFValidationError:
        return False
    return name.count("/") <= 1


def hub_endpoint() -> str:
    return os.environ.get("HF_ENDPOINT", "https://huggingface.co")


@functools.lru_cache(maxsize=4)
def hub_reachable(endpoint: str, seconds: float = HUB_PROBE_SECONDS) -> bool:
    """Whether `endpoint` answers an HTTP request (any status) within `seconds`, name lookup included."""
    answered: list[bool] = []

    def probe() -> None:
        try:
            urllib.request.urlopen(urllib.request.Request(endpoint, method="HEAD"), timeout=seconds).close()
            answered.append(True)
        except urllib.error.HTTPError:  # an answer, if not a welcome one
            answered.append(True)
        except (OSError, ValueError):
            answered.append(False)

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(seconds + 0.5)  # a name lookup may ignore the socket timeout
    return bool(answered and answered[0])


def offline_mode_set(variables: tuple[str, ...] = OFFLINE_VARIABLES[:1]) -> bool:
    """Whether one of the environment `variables` (default: HF_HUB_OFFLINE) says offline."""
    return any(os.environ.get(name, "0").lower() in ("1", "true", "yes") for name in variables)


def offline_note(probed_offline: bool, variables: tuple[str, ...] = OFFLINE_VARIABLES[:1]) -> str:
    """The sentence added to a not-found message when only the local cache was searched: offline mode is set
    (one of `variables`), or the hub did not answer the probe (`probed_offline`); else nothing."""
    if offline_mode_set(variables):
        return " The machine is offline (HF_HUB_OFFLINE=1), so only the local cache was searched."
    if probed_offline:
        return (f" The hub ({hub_endpoint()}) could not be reached within {HUB_PROBE_SECONDS:.0f} s: the machine "
                "looks offline, so only the local cache was searched.")
    return ""
