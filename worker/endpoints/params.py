"""Sampler parameters by server kind: which a server takes, and under which name.

Servers drop a parameter they do not know without an error (llama.cpp's server ignores
``repetition_penalty`` and ``typical_p``), so a request would silently mean something else on
another server. genqueue knows each supported kind's parameters, translates the common ones
that go by several names, fills in ``max_tokens`` (the servers' own defaults differ: 16 tokens,
512, the whole context), and refuses a parameter the endpoint's kind does not take, unless the
endpoint says ``strict_params = false``.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from worker.errors import InvalidRequest

if TYPE_CHECKING:
    from worker.contract import GenerationRequest
    from worker.endpoints.config import Endpoints, EndpointSpec

#: The OpenAI completions API's sampler fields, which every kind takes.
OPENAI_PARAMS = frozenset(
    {
        "max_tokens", "temperature", "top_p", "stop", "seed", "presence_penalty",
        "frequency_penalty", "logit_bias", "logprobs", "top_logprobs", "best_of", "suffix",
        "user", "response_format",
    }
)  # fmt: skip

#: vLLM's OpenAI server (and RunPod's serverless vLLM worker): the sampler fields of its
#: ``CompletionRequest`` (``vllm/entrypoints/openai/completion/protocol.py`` at vLLM commit
#: 002032ee2b18, which has no ``best_of``, no ``top_logprobs``, and ``structured_outputs`` in
#: place of the ``guided_*`` fields); tests/unit/worker/endpoints/test_params_vllm.py checks it.
VLLM_PARAMS = (OPENAI_PARAMS - {"best_of", "top_logprobs"}) | {
    "use_beam_search", "top_k", "min_p", "repetition_penalty", "watermarking", "length_penalty",
    "stop_token_ids", "include_stop_str_in_output", "ignore_eos", "min_tokens",
    "skip_special_tokens", "spaces_between_special_tokens", "truncate_prompt_tokens",
    "truncation_side", "allowed_token_ids", "prompt_logprobs", "logprob_token_ids", "bad_words",
    "add_special_tokens", "structured_outputs", "repetition_detection", "thinking_token_budget",
}  # fmt: skip

#: llama-cpp-python's server (``python -m llama_cpp.server``): CreateCompletionRequest's fields.
LLAMACPP_PARAMS = OPENAI_PARAMS | {
    "top_k", "min_p", "min_tokens", "repeat_penalty", "mirostat_mode", "mirostat_tau",
    "mirostat_eta", "grammar", "logit_bias_type",
}  # fmt: skip

#: text-generation-webui's OpenAI-compatible extension: v4.7.3's ``CompletionRequest``
#: (``modules/api/typing.py``: GenerationOptions and CompletionRequestParams, which have no
#: ``response_format`` and no ``top_logprobs``); tests/unit/worker/endpoints/test_params_sources.py
#: checks it.
TEXTGEN_PARAMS = (OPENAI_PARAMS - {"response_format", "top_logprobs"}) | {
    "preset", "dynatemp_low", "dynatemp_high", "dynatemp_exponent", "smoothing_factor",
    "smoothing_curve", "min_p", "top_k", "typical_p", "xtc_threshold", "xtc_probability",
    "epsilon_cutoff", "eta_cutoff", "tfs", "top_a", "top_n_sigma", "adaptive_target",
    "adaptive_decay", "dry_multiplier",
    "dry_allowed_length", "dry_base", "repetition_penalty", "encoder_repetition_penalty",
    "no_repeat_ngram_size", "repetition_penalty_range", "penalty_alpha", "guidance_scale",
    "negative_prompt", "mirostat_mode", "mirostat_tau", "mirostat_eta", "prompt_lookup_num_tokens",
    "max_tokens_second", "do_sample", "dynamic_temperature", "temperature_last",
    "auto_max_new_tokens", "ban_eos_token", "add_bos_token", "enable_thinking",
    "reasoning_effort", "preserve_thinking", "skip_special_tokens", "static_cache",
    "truncation_length", "seed", "sampler_priority", "custom_token_bans",
    "dry_sequence_breakers", "grammar_string",
}  # fmt: skip

#: The parameters each endpoint kind takes (``runpod-serverless`` runs vLLM).
KIND_PARAMS: dict[str, frozenset[str]] = {
    "textgen": frozenset(TEXTGEN_PARAMS),
    "vllm": frozenset(VLLM_PARAMS),
    "llamacpp": frozenset(LLAMACPP_PARAMS),
    "openai": OPENAI_PARAMS,
    "runpod-serverless": frozenset(VLLM_PARAMS),
}

#: Names of one setting on different servers; a request may use any of them.
SYNONYMS: tuple[frozenset[str], ...] = (
    frozenset({"repetition_penalty", "repeat_penalty"}),
    frozenset({"grammar", "grammar_string"}),
)


def _name_for(kind: str, name: str) -> str:
    """``name`` as the server of ``kind`` calls it (itself when it has no other name there)."""
    accepted = KIND_PARAMS[kind]
    if name in accepted:
        return name
    for group in SYNONYMS:
        if name in group:
            return next((alias for alias in sorted(group) if alias in accepted), name)
    return name


def refused(kind: str, names: Iterable[str]) -> list[str]:
    """The parameters of ``names`` that a server of ``kind`` does not take, under any name."""
    accepted = KIND_PARAMS[kind]
    return sorted(name for name in names if _name_for(kind, name) not in accepted)


def for_server(kind: str, params: dict[str, Any], default_max_tokens: int) -> dict[str, Any]:
    """``params`` as a server of ``kind`` takes them: common names translated, ``max_tokens``
    always set. Names the kind does not know pass as they are (``strict_params = false``)."""
    sent = {_name_for(kind, name): value for name, value in params.items()}
    sent.setdefault("max_tokens", default_max_tokens)
    return sent


def describe_refusal(endpoint: str, kind: str, names: list[str]) -> str:
    """The error of a request whose ``params`` the endpoint's kind does not take."""
    listed = ", ".join(f"params.{name}" for name in names)
    return (
        f"endpoint {endpoint!r} (kind {kind}) does not take {listed}; a server of that kind "
        "would ignore it (set strict_params = false on the endpoint to send it anyway)"
    )


def call_params(
    request: GenerationRequest, spec: EndpointSpec, default_max_tokens: int
) -> dict[str, Any]:
    """The request's ``params`` as the endpoint's kind takes them (the API refuses the
    others at submission; a task sent straight to Celery fails here, :class:`InvalidRequest`)."""
    params = request.params.model_dump(mode="json", exclude_none=True)
    unknown = refused(spec.kind, params)
    if unknown and spec.strict_params:
        raise InvalidRequest(describe_refusal(spec.name, spec.kind, unknown))
    return for_server(spec.kind, params, default_max_tokens)


def request_problem(endpoints: Endpoints, request: GenerationRequest) -> str | None:
    """Why the endpoints a request may go to (its endpoint and the fallbacks) would not take
    its ``params``; ``None`` when they all would. ``request.endpoint`` must be configured."""
    names = list(request.params.model_dump(exclude_none=True))
    if not names:
        return None
    for name in endpoints.chain(request.endpoint):
        spec = endpoints.get(name)
        unknown = refused(spec.kind, names) if spec.strict_params else []
        if unknown:
            return describe_refusal(spec.name, spec.kind, unknown)
    return None
