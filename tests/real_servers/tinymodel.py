"""A tiny llama-architecture model with random weights, written as GGUF with the ``gguf``
package: a byte-fallback SentencePiece vocabulary with the ChatML tokens, 2 layers, embedding
64, context 256. Under 1 MB, the same bytes every time, nothing downloaded."""

from __future__ import annotations

from pathlib import Path

CONTEXT = 256
EMBEDDING = 64
LAYERS = 2
HEADS = 4
FEED_FORWARD = 128
SEED = 20260101
#: ``▁``-prefixed words and letters beside the 256 byte tokens, so text is not all bytes.
PIECES = (
    "▁the", "▁a", "▁cake", "▁make", "▁how", "▁can", "▁I", "▁you", "▁is", "▁and", "▁to", "▁of",
    "▁helpful", "▁assistant", "▁user", "▁system", "▁", *"abcdefghijklmnopqrstuvwxyz",
    *".,!?:'",
)  # fmt: skip
CHATML_TEMPLATE = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + "
    "message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def _vocabulary() -> tuple[list[str], list[float], list[int]]:
    import gguf

    types = gguf.TokenType
    tokens = ["<unk>", "<s>", "</s>", "<|im_start|>", "<|im_end|>"]
    kinds = [types.UNKNOWN, types.CONTROL, types.CONTROL, types.CONTROL, types.CONTROL]
    tokens += [f"<0x{byte:02X}>" for byte in range(256)]
    kinds += [types.BYTE] * 256
    tokens += list(PIECES)
    kinds += [types.NORMAL] * len(PIECES)
    scores = [0.0] * 261 + [-float(i) for i in range(len(PIECES))]
    return tokens, scores, [int(kind) for kind in kinds]


def write_tiny_model(path: Path) -> Path:
    """Write the model to ``path`` (the same bytes on every call) and return ``path``."""
    import gguf
    import numpy as np

    rng = np.random.RandomState(SEED)
    tokens, scores, kinds = _vocabulary()

    def weights(*shape: int) -> np.ndarray:
        return (rng.standard_normal(shape) * 0.5).astype(np.float32)

    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name("genqueue-tiny-random")
    writer.add_context_length(CONTEXT)
    writer.add_embedding_length(EMBEDDING)
    writer.add_block_count(LAYERS)
    writer.add_feed_forward_length(FEED_FORWARD)
    writer.add_head_count(HEADS)
    writer.add_head_count_kv(HEADS)
    writer.add_rope_dimension_count(EMBEDDING // HEADS)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    writer.add_tokenizer_model("llama")
    writer.add_token_list(tokens)
    writer.add_token_scores(scores)
    writer.add_token_types(kinds)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_unk_token_id(0)
    writer.add_add_bos_token(True)
    writer.add_add_eos_token(False)
    writer.add_chat_template(CHATML_TEMPLATE)
    ones = np.ones(EMBEDDING, dtype=np.float32)
    # Dimension 0 of the residual stream is a constant: every embedding has 8 there and no
    # layer writes to it. The output rows of the control tokens and of the bytes 0x80-0xFF
    # weigh it -1000, so they are never sampled: a generation always runs to max_tokens (no
    # early end of sequence) and its text is never an invalid UTF-8 sequence dropped whole.
    embeddings = weights(len(tokens), EMBEDDING)
    embeddings[:, 0] = 8.0
    output = weights(len(tokens), EMBEDDING)
    output[:5, 0] = -1000.0
    output[5 + 0x80 : 5 + 0x100, 0] = -1000.0
    writer.add_tensor("token_embd.weight", embeddings)
    writer.add_tensor("output_norm.weight", ones)
    writer.add_tensor("output.weight", output)
    for layer in range(LAYERS):
        prefix = f"blk.{layer}"
        writer.add_tensor(f"{prefix}.attn_norm.weight", ones)
        for name in ("attn_q", "attn_k", "attn_v"):
            writer.add_tensor(f"{prefix}.{name}.weight", weights(EMBEDDING, EMBEDDING))
        attn_output = weights(EMBEDDING, EMBEDDING)
        attn_output[0, :] = 0.0
        writer.add_tensor(f"{prefix}.attn_output.weight", attn_output)
        writer.add_tensor(f"{prefix}.ffn_norm.weight", ones)
        writer.add_tensor(f"{prefix}.ffn_gate.weight", weights(FEED_FORWARD, EMBEDDING))
        writer.add_tensor(f"{prefix}.ffn_up.weight", weights(FEED_FORWARD, EMBEDDING))
        ffn_down = weights(EMBEDDING, FEED_FORWARD)
        ffn_down[0, :] = 0.0
        writer.add_tensor(f"{prefix}.ffn_down.weight", ffn_down)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path
