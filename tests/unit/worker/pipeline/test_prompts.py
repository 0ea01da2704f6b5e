"""Table tests for worker.pipeline.render: exact output of every built-in template, and the
sandbox."""

from __future__ import annotations

from pathlib import Path

import jinja2
import pytest
from jinja2.exceptions import SecurityError

from worker.contract import BUILTIN_TEMPLATES, GenerationRequest
from worker.errors import TemplateError
from worker.pipeline.render import BUILTIN_SOURCES, PromptRenderer

P = "What is 2+2?"
S = "You are terse."
MULTI_TURN = [
    {"role": "system", "content": "SYS"},
    {"role": "user", "content": "U1"},
    {"role": "assistant", "content": "A1"},
    {"role": "user", "content": "U2"},
]
ALPACA_DEFAULT = (
    "Below is an instruction that describes a task. "
    "Write a response that appropriately completes the request."
)
VICUNA_DEFAULT = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)

# template -> (prompt + system, prompt alone, multi-turn messages)
EXPECTED = {
    "chatml": (
        f"<|im_start|>system\n{S}<|im_end|>\n<|im_start|>user\n{P}<|im_end|>\n"
        "<|im_start|>assistant\n",
        f"<|im_start|>user\n{P}<|im_end|>\n<|im_start|>assistant\n",
        "<|im_start|>system\nSYS<|im_end|>\n"
        "<|im_start|>user\nU1<|im_end|>\n"
        "<|im_start|>assistant\nA1<|im_end|>\n"
        "<|im_start|>user\nU2<|im_end|>\n"
        "<|im_start|>assistant\n",
    ),
    "llama2": (
        f"<s>[INST] <<SYS>>\n{S}\n<</SYS>>\n\n{P} [/INST]",
        f"<s>[INST] {P} [/INST]",
        "<s>[INST] <<SYS>>\nSYS\n<</SYS>>\n\nU1 [/INST] A1 </s><s>[INST] U2 [/INST]",
    ),
    "mistral": (
        f"<s>[INST] {S}\n\n{P} [/INST]",
        f"<s>[INST] {P} [/INST]",
        "<s>[INST] SYS\n\nU1 [/INST]A1</s>[INST] U2 [/INST]",
    ),
    "alpaca": (
        f"{S}\n\n### Instruction:\n{P}\n\n### Response:\n",
        f"{ALPACA_DEFAULT}\n\n### Instruction:\n{P}\n\n### Response:\n",
        "SYS\n\n### Instruction:\nU1\n\n### Response:\nA1\n\n"
        "### Instruction:\nU2\n\n### Response:\n",
    ),
    "vicuna": (
        f"{S} USER: {P} ASSISTANT:",
        f"{VICUNA_DEFAULT} USER: {P} ASSISTANT:",
        "SYS USER: U1 ASSISTANT: A1</s> USER: U2 ASSISTANT:",
    ),
    "raw": (
        f"{S}\n\n{P}",
        P,
        "SYS\n\nU1\n\nA1\n\nU2",
    ),
}


@pytest.fixture(scope="module")
def renderer() -> PromptRenderer:
    return PromptRenderer()


def render(renderer: PromptRenderer, **fields: object) -> str:
    return renderer.render(GenerationRequest.model_validate(fields))


def test_the_table_covers_every_builtin() -> None:
    assert set(EXPECTED) == set(BUILTIN_SOURCES) == set(BUILTIN_TEMPLATES)
    assert PromptRenderer().names == sorted(BUILTIN_TEMPLATES)


@pytest.mark.parametrize(("template", "expected"), [(t, e[0]) for t, e in EXPECTED.items()])
def test_prompt_and_system(renderer: PromptRenderer, template: str, expected: str) -> None:
    assert render(renderer, prompt=P, system=S, template=template) == expected


@pytest.mark.parametrize(("template", "expected"), [(t, e[1]) for t, e in EXPECTED.items()])
def test_prompt_alone(renderer: PromptRenderer, template: str, expected: str) -> None:
    assert render(renderer, prompt=P, template=template) == expected


@pytest.mark.parametrize(("template", "expected"), [(t, e[2]) for t, e in EXPECTED.items()])
def test_multi_turn_messages(renderer: PromptRenderer, template: str, expected: str) -> None:
    assert render(renderer, messages=MULTI_TURN, template=template) == expected


def test_chatml_is_the_default_template(renderer: PromptRenderer) -> None:
    assert render(renderer, prompt=P) == EXPECTED["chatml"][1]


INJECTIONS = [
    "{{ 7*7 }}",
    "{% for x in range(3) %}x{% endfor %}",
    "{% for %}",
    "{{ ''.__class__.__mro__ }}",
    "{{ cycler.__init__.__globals__ }}",
    "{# comment #}{% raw %}",
]


@pytest.mark.parametrize("text", INJECTIONS)
@pytest.mark.parametrize("template", sorted(BUILTIN_SOURCES))
def test_template_syntax_in_a_prompt_renders_literally(
    renderer: PromptRenderer, template: str, text: str
) -> None:
    assert render(renderer, prompt=text, template=template) == EXPECTED[template][1].replace(
        P, text
    )


@pytest.mark.parametrize("text", INJECTIONS)
def test_template_syntax_in_system_and_messages_renders_literally(
    renderer: PromptRenderer, text: str
) -> None:
    assert render(renderer, prompt="p", system=text, template="raw") == f"{text}\n\np"
    messages = [{"role": "user", "content": text}, {"role": "assistant", "content": text}]
    assert render(renderer, messages=messages, template="raw") == f"{text}\n\n{text}"


def test_unknown_template_is_named(renderer: PromptRenderer) -> None:
    with pytest.raises(TemplateError) as info:
        render(renderer, prompt=P, template="nope")
    assert "'nope'" in info.value.message
    assert "chatml" in info.value.message  # lists the known ones
    assert info.value.error_type == "template_error"


# --- operator templates from a directory --------------------------------------------------

VARS_TEMPLATE = (
    "system={{ system }}|prompt={{ prompt }}|n={{ messages|length }}"
    "|messages={% for m in messages %}{{ m.role }}:{{ m.content }};{% endfor %}"
    "|turns={% for m in turns %}{{ m.role }}:{{ m.content }};{% endfor %}"
)


def make_dir(tmp_path: Path, **templates: str) -> Path:
    directory = tmp_path / "templates"
    directory.mkdir()
    for name, source in templates.items():
        (directory / f"{name}.j2").write_text(source, encoding="utf-8")
    return directory


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        (
            {"prompt": "P", "system": "S"},
            "system=S|prompt=P|n=2|messages=system:S;user:P;|turns=user:P;",
        ),
        ({"prompt": "P"}, "system=None|prompt=P|n=1|messages=user:P;|turns=user:P;"),
        (
            {"messages": MULTI_TURN},
            "system=SYS|prompt=None|n=4"
            "|messages=system:SYS;user:U1;assistant:A1;user:U2;"
            "|turns=user:U1;assistant:A1;user:U2;",
        ),
    ],
    ids=["prompt+system", "prompt", "messages"],
)
def test_directory_template_gets_the_variables(
    tmp_path: Path, fields: dict[str, object], expected: str
) -> None:
    renderer = PromptRenderer(make_dir(tmp_path, mine=VARS_TEMPLATE))
    assert "mine" in renderer.names
    assert render(renderer, template="mine", **fields) == expected


def test_directory_keeps_the_builtins_and_may_override_one(tmp_path: Path) -> None:
    renderer = PromptRenderer(make_dir(tmp_path, mine="x", chatml="custom {{ prompt }}\n"))
    assert renderer.names == sorted({*BUILTIN_TEMPLATES, "mine"})
    assert render(renderer, prompt="P", template="chatml") == "custom P\n"
    assert render(renderer, prompt="P", template="llama2") == "<s>[INST] P [/INST]"


def test_directory_ignores_files_that_are_not_j2(tmp_path: Path) -> None:
    directory = make_dir(tmp_path, mine="x")
    (directory / "notes.txt").write_text("{% broken", encoding="utf-8")
    assert PromptRenderer(directory).names == sorted({*BUILTIN_TEMPLATES, "mine"})


@pytest.mark.parametrize(
    "source",
    [
        "{{ ''.__class__.__mro__[1].__subclasses__() }}",
        "{{ cycler.__init__.__globals__ }}",
        "{{ joiner.__init__.__globals__['os'] }}",
        "{{ prompt.__class__ }}",
        "{{ messages.append(1) }}",
        "{% set d = {} %}{{ d.update(a=1) }}",
    ],
    ids=["mro-subclasses", "cycler-globals", "joiner-globals", "dunder", "list-mutate", "dict"],
)
def test_directory_template_cannot_escape_the_sandbox(tmp_path: Path, source: str) -> None:
    renderer = PromptRenderer(make_dir(tmp_path, evil=source))
    with pytest.raises(TemplateError) as info:
        render(renderer, prompt="P", template="evil")
    assert isinstance(info.value.__cause__, SecurityError)
    assert "'evil'" in info.value.message
    assert "<class" not in info.value.message  # nothing was evaluated and echoed


@pytest.mark.parametrize(
    ("source", "cause"),
    [
        ("{{ nope }}", jinja2.UndefinedError),
        ("{{ 1 // 0 }}", ZeroDivisionError),
    ],
    ids=["undefined", "zero-division"],
)
def test_directory_template_runtime_errors_are_template_errors(
    tmp_path: Path, source: str, cause: type[BaseException]
) -> None:
    renderer = PromptRenderer(make_dir(tmp_path, bad=source))
    with pytest.raises(TemplateError, match="'bad' failed") as info:
        render(renderer, prompt="P", template="bad")
    assert isinstance(info.value.__cause__, cause)


@pytest.mark.parametrize(
    "source", ["{% for %}", "{{ prompt ", "{% if x %}unclosed", "{% endfor %}"]
)
def test_syntax_error_fails_at_construction(tmp_path: Path, source: str) -> None:
    directory = make_dir(tmp_path, broken=source)
    with pytest.raises(TemplateError, match="template syntax error") as info:
        PromptRenderer(directory)
    assert isinstance(info.value.__cause__, jinja2.TemplateSyntaxError)


def test_missing_templates_dir(tmp_path: Path) -> None:
    missing = tmp_path / "does-not-exist"
    with pytest.raises(TemplateError, match="does not exist") as info:
        PromptRenderer(missing)
    assert str(missing) in info.value.message


def test_templates_dir_that_is_a_file(tmp_path: Path) -> None:
    path = tmp_path / "file.j2"
    path.write_text("x", encoding="utf-8")
    with pytest.raises(TemplateError, match="does not exist"):
        PromptRenderer(path)
