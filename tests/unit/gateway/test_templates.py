from __future__ import annotations

import msgspec
import pytest

from gateway.policy.templates import (
    Template,
    TemplateMessage,
    apply_template,
    parse_prompt_ref,
    render_messages,
)
from shared.errors import BadRequestError

GREET = Template(
    template_id="greet",
    version=2,
    messages=(
        TemplateMessage("system", "You help with {{product}}."),
        TemplateMessage("user", "Greet {{ name }} ({{name}})."),
    ),
)


def test_variables_and_render() -> None:
    assert GREET.variables == {"product", "name"}
    assert render_messages(GREET, {"product": "Floopy", "name": "{{product}}"}) == [
        {"role": "system", "content": "You help with Floopy."},
        # an input is text, never re-read as a template
        {"role": "user", "content": "Greet {{product}} ({{product}})."},
    ]


@pytest.mark.parametrize(
    ("inputs", "message"),
    [
        ({"product": "x"}, "missing input 'name'"),
        ({"product": "x", "name": "y", "nmae": "z"}, "has no variable 'nmae'"),
        ({}, "missing input 'name', 'product'"),
    ],
)
def test_missing_or_unknown_inputs_are_named(inputs: dict[str, str], message: str) -> None:
    with pytest.raises(BadRequestError, match=message):
        render_messages(GREET, inputs)


def test_apply_template_replaces_inputs_and_keeps_the_rest() -> None:
    body = msgspec.json.encode(
        {
            "model": "gpt-4o",
            "inputs": {"product": "Floopy", "name": 7},
            "messages": [{"role": "user", "content": "and then?"}],
            "temperature": 0.2,
        }
    )
    rendered, inputs = apply_template(body, GREET)
    sent = msgspec.json.decode(rendered)
    assert inputs == {"product": "Floopy", "name": "7"}
    assert "inputs" not in sent and sent["temperature"] == 0.2
    assert [m["content"] for m in sent["messages"]] == [
        "You help with Floopy.",
        "Greet 7 (7).",
        "and then?",
    ]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"[1]", "a JSON object"),
        (b'{"model": "m", "inputs": [1]}', "`inputs` must be an object"),
        (b'{"model": "m", "inputs": {"name": {"a": 1}, "product": "p"}}', "'name' must be"),
    ],
)
def test_bad_bodies(body: bytes, message: str) -> None:
    with pytest.raises(BadRequestError, match=message):
        apply_template(body, GREET)


def test_prompt_ref() -> None:
    assert parse_prompt_ref("greet") == ("greet", None)
    assert parse_prompt_ref("greet@3") == ("greet", 3)
    for bad in ("greet@0", "greet@x", "gr eet", ""):
        with pytest.raises(BadRequestError):
            parse_prompt_ref(bad)
