"""The ``vllm`` kind's parameter table against vLLM's own ``CompletionRequest``.

vLLM's repository is too large to keep beside the checkout, so its fields are recorded here,
read from ``vllm/entrypoints/openai/completion/protocol.py`` at vLLM commit
``002032ee2b18e1f7bd924ec47b62504ba3866063`` (the stored snapshot genqueue was checked
against; its release tag could not be read from it). Read that file again when vLLM changes
and update both lists. A field vLLM drops in silence must not be listed; one it takes must be."""

from __future__ import annotations

from worker.endpoints.params import KIND_PARAMS

#: ``CompletionRequest``'s fields, in the file's order.
VLLM_COMPLETION_FIELDS = (
    "model", "prompt", "echo", "frequency_penalty", "logit_bias", "logprobs", "max_tokens", "n",
    "presence_penalty", "seed", "stop", "stream", "stream_options", "suffix", "temperature",
    "top_p", "user",
    # completion-sampling-params
    "use_beam_search", "top_k", "min_p", "repetition_penalty", "watermarking", "length_penalty",
    "stop_token_ids", "include_stop_str_in_output", "ignore_eos", "min_tokens",
    "skip_special_tokens", "spaces_between_special_tokens", "truncate_prompt_tokens",
    "truncation_side", "allowed_token_ids", "prompt_logprobs", "logprob_token_ids", "bad_words",
    # completion-extra-params
    "prompt_embeds", "add_special_tokens", "response_format", "structured_outputs", "priority",
    "request_id", "session_id", "return_tokens_as_token_ids", "return_token_ids",
    "routed_experts_prompt_start", "return_token_offsets", "return_mm_kwargs", "cache_salt",
    "kv_transfer_params", "ec_transfer_params", "vllm_xargs", "repetition_detection",
    "thinking_token_budget", "stream_interval",
)  # fmt: skip

#: Fields that are not sampler parameters: genqueue sets them itself (``model``, ``prompt``,
#: ``stream``, ``stream_options``, ``stream_interval``), takes one choice of text without the
#: prompt echoed (``n``, ``echo``, ``prompt_embeds``, the ``return_*`` fields), or they steer
#: vLLM's scheduling and caches rather than the text (``priority``, ``request_id``,
#: ``session_id``, ``cache_salt``, the transfer parameters, ``vllm_xargs``).
VLLM_NOT_PARAMS = frozenset(
    {
        "model", "prompt", "echo", "n", "stream", "stream_options", "stream_interval",
        "prompt_embeds", "return_tokens_as_token_ids", "return_token_ids",
        "routed_experts_prompt_start", "return_token_offsets", "return_mm_kwargs", "priority",
        "request_id", "session_id", "cache_salt", "kv_transfer_params", "ec_transfer_params",
        "vllm_xargs",
    }
)  # fmt: skip


def test_the_recorded_fields_are_the_files_fields_once_each() -> None:
    assert len(VLLM_COMPLETION_FIELDS) == len(set(VLLM_COMPLETION_FIELDS)) == 54
    assert sorted(VLLM_NOT_PARAMS - set(VLLM_COMPLETION_FIELDS)) == []


def test_the_vllm_table_is_vllm_s_own() -> None:
    server = set(VLLM_COMPLETION_FIELDS) - VLLM_NOT_PARAMS
    ours = set(KIND_PARAMS["vllm"])
    assert sorted(ours - server) == [], "listed, but vLLM drops them in silence"
    assert sorted(server - ours) == [], "vLLM takes them, genqueue refuses them"


def test_the_dropped_fields_are_refused() -> None:
    """``guided_*`` became ``structured_outputs``; ``best_of`` and ``top_logprobs`` are gone."""
    for name in ("guided_json", "guided_grammar", "guided_decoding_backend", "best_of"):
        assert name not in KIND_PARAMS["vllm"]
    assert "top_logprobs" not in KIND_PARAMS["vllm"]
    assert "structured_outputs" in KIND_PARAMS["vllm"]


def test_the_runpod_serverless_table_is_the_vllm_table() -> None:
    """RunPod's vLLM worker (runpod-workers/worker-vllm ``src/handler.py`` at commit
    ``7a925039a53a10eab38d1764eb717a2ea5bdee07``) sends a job's ``sampling_params`` to vLLM's
    own ``/v1/completions`` as the body's fields (``{**sampling_params, "stream": ...,
    "prompt": ...}``): vLLM's ``CompletionRequest`` reads them, so its table is the ``vllm``
    kind's. (Its older ``sampling_params.py``, a pydantic model of vLLM's ``SamplingParams``,
    is gone from that commit.) Read the handler again when the worker changes."""
    assert KIND_PARAMS["runpod-serverless"] == KIND_PARAMS["vllm"]
