"""Each kind's parameter table against its server's own request model: text-generation-webui
v4.7.3's ``modules/api/typing.py``, read from the source snapshot beside the checkout
(``../shared/data``), never built; llama-cpp-python's ``llama_cpp/server/types.py`` where it is
installed (the real-servers extra), read without importing it. A field the server drops in
silence must not be listed; a field it takes must be."""

from __future__ import annotations

import ast
import importlib.util
import tarfile
from pathlib import Path

import pytest

from tests.conftest import ROOT
from worker.endpoints.params import KIND_PARAMS

TGWUI = "text-generation-webui-v4.7.3"
#: Where the snapshot is: ``../shared`` beside the checkout (CI), or the machine's shared folder.
SNAPSHOTS = [
    base / "data" / f"{TGWUI}.tar.gz" for base in (ROOT.parent / "shared", Path("/work/shared"))
]
#: Fields of the request that are not sampler parameters: genqueue sets them itself
#: (``prompt``, ``stream``, ``stream_options``, ``model``) or takes one choice without the
#: prompt echoed (``n``, ``echo``); ``messages`` is the chat route's.
NOT_PARAMS = frozenset({"model", "prompt", "messages", "stream", "stream_options", "n", "echo"})


def _snapshot() -> Path:
    for path in SNAPSHOTS:
        if path.is_file():
            return path
    pytest.skip(f"no {TGWUI} source snapshot in {' or '.join(map(str, SNAPSHOTS))}")


def class_fields(source: str, *names: str) -> set[str]:
    """The annotated fields of the classes ``names`` of a module's source."""
    fields: set[str] = set()
    for node in ast.parse(source).body:
        if isinstance(node, ast.ClassDef) and node.name in names:
            fields |= {
                item.target.id
                for item in node.body
                if isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name)
            }
    return fields


def tgwui_completion_fields() -> set[str]:
    """The fields of v4.7.3's ``CompletionRequest`` (GenerationOptions, CompletionRequestParams)."""
    with tarfile.open(_snapshot()) as archive:
        member = archive.extractfile(f"{TGWUI}/modules/api/typing.py")
        assert member is not None
        source = member.read().decode()
    return class_fields(source, "GenerationOptions", "CompletionRequestParams")


def test_the_textgen_table_is_text_generation_webui_s_own() -> None:
    server = tgwui_completion_fields() - NOT_PARAMS
    ours = set(KIND_PARAMS["textgen"])
    assert sorted(ours - server) == [], "listed, but v4.7.3 drops them in silence"
    assert sorted(server - ours) == [], "v4.7.3 takes them, genqueue refuses them"


def test_class_fields_reads_annotated_fields_only() -> None:
    source = "class A(B):\n    x: int = 1\n    y = 2\n    def f(self): pass\nclass C:\n    z: str\n"
    assert class_fields(source, "A") == {"x"}
    assert class_fields(source, "A", "C") == {"x", "z"}


#: llama-cpp-python's chat fields that are not sampler parameters (tools and functions).
LLAMACPP_NOT_PARAMS = NOT_PARAMS | {"functions", "function_call", "tools", "tool_choice"}


def test_the_llamacpp_table_is_llama_cpp_python_s_own() -> None:
    """One table serves both routes: the fields of its completion and chat requests."""
    spec = importlib.util.find_spec("llama_cpp")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("llama-cpp-python is not installed (pip install -e '.[real-servers]')")
    source = (Path(next(iter(spec.submodule_search_locations))) / "server" / "types.py").read_text()
    server = class_fields(source, "CreateCompletionRequest", "CreateChatCompletionRequest")
    server -= LLAMACPP_NOT_PARAMS
    ours = set(KIND_PARAMS["llamacpp"])
    assert sorted(ours - server) == [], "listed, but llama-cpp-python drops them in silence"
    assert sorted(server - ours) == [], "llama-cpp-python takes them, genqueue refuses them"
