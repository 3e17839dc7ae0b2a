"""A whole-file .json that does not parse names the line of the mistake, counted by hand here."""

import pytest

from alignlab import DataError
from alignlab.data import load_preferences


@pytest.mark.parametrize("bad_line", [2, 3, 5])
def test_whole_file_json_decode_errors_carry_their_line(tmp_path, bad_line):
    good = '  {"prompt": "a", "chosen": "b", "rejected": "c"},'
    lines = ["[", good, good, good, good.rstrip(","), "]"]
    lines[bad_line - 1] = '  {"prompt": "a" "chosen": "b", "rejected": "c"},'  # a missing comma
    path = tmp_path / "pairs.json"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=rf"pairs\.json:line {bad_line}: not valid JSON") as caught:
        load_preferences(str(path))
    assert caught.value.location == f"line {bad_line}"
