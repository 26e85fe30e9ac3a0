"""json_text.loads is json.loads: the same value for every text, the same error for every bad one."""
from __future__ import annotations

import json

import pytest

from batchseg.json_text import loads

TEXTS = ['{"id":[[1,2,3],[4,5,6]],"lstv":{"pattern":"normal","l6_present":false},"seconds":20.7}', '[1, 2.5, null]',
         '"text"', '17', '-0.5e3', 'NaN', '-Infinity', 'true', 'null', '{}', '[]', '{"a": "\\u00e9\\n"}',
         ' {"a": 1}', '{"a": 1}\n', '\t[1]\t', b'{"a": [1]}', '{"a": {"b": {"c": [[]]}}}', '"é ünïcödé"']
BAD = ['', ' ', '{', '{"a": }', '{"a": 1} x', '[1,]', 'nul', "{'a': 1}", '{"a": 1}{"b": 2}', '"open', '01', 'x']


@pytest.mark.parametrize("text", TEXTS)
def test_the_same_value_as_json_loads(text: str | bytes) -> None:
    found = loads(text)
    expected = json.loads(text)
    assert json.dumps(found) == json.dumps(expected) and type(found) is type(expected)


@pytest.mark.parametrize("text", BAD)
def test_the_same_error_as_json_loads(text: str) -> None:
    with pytest.raises(json.JSONDecodeError) as expected:
        json.loads(text)
    with pytest.raises(json.JSONDecodeError) as found:
        loads(text)
    assert str(found.value) == str(expected.value)
