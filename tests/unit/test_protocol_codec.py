"""protocol.dumps/loads run json's C half directly: the same text as json, both ways."""

from __future__ import annotations

import json
import random

import pytest

import distsvc.protocol


def sample(rng: random.Random, depth: int = 0) -> object:
    kind = rng.randrange(8 if depth < 4 else 5)
    if kind == 0:
        return rng.choice([None, True, False])
    if kind == 1:
        return rng.randrange(-2**40, 2**40)
    if kind == 2:
        return rng.uniform(-1e6, 1e6)
    if kind in (3, 4):  # any code point, lone surrogates too (os.environ's undecodable bytes)
        return "".join(chr(rng.randrange(0x110000)) for _ in range(rng.randrange(12)))
    if kind == 5:
        return [sample(rng, depth + 1) for _ in range(rng.randrange(4))]
    return {str(sample(rng, 4)): sample(rng, depth + 1) for _ in range(rng.randrange(4))}


def test_the_same_text_as_json_both_ways() -> None:
    rng = random.Random(9)
    for _ in range(2000):
        value = sample(rng)
        text = json.dumps(value, separators=(",", ":"))
        assert distsvc.protocol.dumps(value) == text
        assert json.dumps(distsvc.protocol.loads(text)) == json.dumps(json.loads(text))


def test_whitespace_around_and_inside_is_json() -> None:
    assert distsvc.protocol.loads(' {"a" : [1, 2.5, "x"]}\n') == {"a": [1, 2.5, "x"]}


@pytest.mark.parametrize("text", ["", "{", "{}x", "nan", "[1,]", "{'a': 1}", "[1] [2]"])
def test_what_is_not_one_json_value_is_a_value_error(text: str) -> None:
    with pytest.raises(ValueError):
        distsvc.protocol.loads(text)


def test_what_json_cannot_hold_is_a_type_error() -> None:
    with pytest.raises(TypeError, match="set is not JSON serializable"):
        distsvc.protocol.dumps({"a": {1}})
