"""Prompt rendering: a request's prompt or messages through a named template.

Templates are Jinja2 sources rendered in an immutable sandbox. Caller input only ever arrives
as the variables ``messages``, ``system`` and ``prompt``, never as template source, so a prompt
full of ``{{ ... }}`` is literal text. Knows nothing of Celery or HTTP.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import jinja2
from jinja2.sandbox import ImmutableSandboxedEnvironment, SecurityError

from worker.contract import GenerationRequest, Message
from worker.errors import TemplateError

_CHATML = (
    "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
    "<|im_start|>assistant\n"
)
# Llama 2 chat: the system prompt sits inside the first [INST] block.
_LLAMA2 = (
    "{% for m in turns %}"
    "{% if m.role == 'user' %}<s>[INST] "
    "{% if loop.first and system %}<<SYS>>\n{{ system }}\n<</SYS>>\n\n{% endif %}"
    "{{ m.content }} [/INST]"
    "{% else %} {{ m.content }} </s>{% endif %}"
    "{% endfor %}"
)
# Mistral Instruct has no system role: the system text opens the first instruction.
_MISTRAL = (
    "<s>{% for m in turns %}"
    "{% if m.role == 'user' %}[INST] "
    "{% if loop.first and system %}{{ system }}\n\n{% endif %}{{ m.content }} [/INST]"
    "{% else %}{{ m.content }}</s>{% endif %}"
    "{% endfor %}"
)
_ALPACA = (
    "{{ system or 'Below is an instruction that describes a task. "
    "Write a response that appropriately completes the request.' }}\n\n"
    "{% for m in turns %}"
    "{% if m.role == 'user' %}### Instruction:\n{{ m.content }}\n\n"
    "{% else %}### Response:\n{{ m.content }}\n\n{% endif %}"
    "{% endfor %}### Response:\n"
)
_VICUNA = (
    "{{ system or 'A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user\\'s questions.' }}"
    "{% for m in turns %}"
    "{% if m.role == 'user' %} USER: {{ m.content }}"
    "{% else %} ASSISTANT: {{ m.content }}</s>{% endif %}"
    "{% endfor %} ASSISTANT:"
)
# The prompt as it is; messages joined by blank lines.
_RAW = "{% for m in messages %}{% if not loop.first %}\n\n{% endif %}{{ m.content }}{% endfor %}"

BUILTIN_SOURCES: Mapping[str, str] = {
    "chatml": _CHATML,
    "llama2": _LLAMA2,
    "mistral": _MISTRAL,
    "alpaca": _ALPACA,
    "vicuna": _VICUNA,
    "raw": _RAW,
}


#: The longest string or list a template may build by repetition (``'a' * n``).
REPEAT_MAX_ITEMS = 1_000_000
#: The largest exponent a template may use (``10 ** n``).
POWER_MAX_EXPONENT = 10_000


class BoundedSandbox(ImmutableSandboxedEnvironment):
    """The immutable sandbox, with repetition and powers bounded so a template stays cheap.

    Jinja's sandbox caps ``range`` but not ``'a' * 10**9`` or ``10 ** 10**6``.
    """

    intercepted_binops = frozenset({"*", "**"})

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        if operator == "**":
            if isinstance(right, int | float) and abs(right) > POWER_MAX_EXPONENT:
                raise SecurityError(f"exponent {right} is above {POWER_MAX_EXPONENT}")
            return left**right
        for seq, count in ((left, right), (right, left)):
            repeats = isinstance(seq, str | list | tuple) and isinstance(count, int)
            if repeats and len(seq) * count > REPEAT_MAX_ITEMS:
                raise SecurityError(f"repetition longer than {REPEAT_MAX_ITEMS} items")
        return left * right


class PromptRenderer:
    """Renders requests through the built-in templates and an operator's ``*.j2`` files.

    :param templates_dir: a directory whose ``NAME.j2`` files become templates named NAME;
        they may override a built-in. ``None`` for the built-ins only.
    """

    def __init__(self, templates_dir: Path | None = None) -> None:
        self._env = BoundedSandbox(
            autoescape=False,
            keep_trailing_newline=True,
            undefined=jinja2.StrictUndefined,
        )
        sources = dict(BUILTIN_SOURCES)
        if templates_dir is not None:
            sources.update(_load_dir(templates_dir))
        try:
            self._templates = {name: self._env.from_string(src) for name, src in sources.items()}
        except jinja2.TemplateSyntaxError as err:
            raise TemplateError(
                f"template syntax error: {err.message} (line {err.lineno})"
            ) from err

    @property
    def names(self) -> list[str]:
        return sorted(self._templates)

    def render(self, request: GenerationRequest, template_name: str | None = None) -> str:
        """The prompt text to send for ``request``; :class:`TemplateError` if it cannot be.

        ``template_name`` overrides the request's template (an endpoint's default).
        """
        name = template_name or request.template
        template = self._templates.get(name)
        if template is None:
            known = ", ".join(self.names)
            raise TemplateError(f"unknown template {name!r} (known: {known})")
        messages = as_messages(request)
        system = next((m.content for m in messages if m.role == "system"), None)
        turns = [_as_dict(m) for m in messages if m.role != "system"]
        try:
            return template.render(
                messages=[_as_dict(m) for m in messages],
                turns=turns,
                system=system,
                prompt=request.prompt,
            )
        except jinja2.TemplateError as err:
            raise TemplateError(f"template {name!r} failed: {err}") from err
        except (ArithmeticError, MemoryError, RecursionError, ValueError) as err:
            raise TemplateError(f"template {name!r} failed: {err!r}") from err


def as_messages(request: GenerationRequest) -> Sequence[Message]:
    """The request as a message list: ``system`` + ``prompt`` become two messages."""
    if request.messages is not None:
        return request.messages
    messages = []
    if request.system is not None:
        messages.append(Message(role="system", content=request.system))
    messages.append(Message(role="user", content=request.prompt or ""))
    return messages


def _as_dict(message: Message) -> dict[str, str]:
    return {"role": message.role, "content": message.content}


def _load_dir(directory: Path) -> dict[str, str]:
    if not directory.is_dir():
        raise TemplateError(f"templates directory {str(directory)!r} does not exist")
    return {path.stem: path.read_text(encoding="utf-8") for path in sorted(directory.glob("*.j2"))}
