"""Prompt encoding with A1111-style chunking: prompts longer than 75 tokens are split, never silently cut."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sdplay.families import FamilySpec


@dataclass
class Embeddings:
    """Text conditioning for a batch, ready to pass to the pipeline."""

    prompt: Any  # (B, 77 * chunks, D)
    negative: Any  # (B, 77 * chunks, D)
    pooled: Any = None  # (B, D2), SDXL only
    negative_pooled: Any = None
    chunks: int = 1

    def pipeline_kwargs(self) -> dict[str, Any]:
        kwargs = {"prompt_embeds": self.prompt, "negative_prompt_embeds": self.negative}
        if self.pooled is not None:
            kwargs |= {"pooled_prompt_embeds": self.pooled, "negative_pooled_prompt_embeds": self.negative_pooled}
        return kwargs


def execution_device(pipe: Any) -> Any:
    """The device the pipeline computes on, looked up once: diffusers' property walks every module on each call."""
    device = pipe.__dict__.get("sdplay_execution_device")
    if device is None:
        device = pipe.sdplay_execution_device = pipe._execution_device
    return device


def chunk_ids(tokenizer: Any, text: str) -> list[list[int]]:
    """Token ids in chunks of (max_length - 2), each wrapped in BOS/EOS and padded to max_length."""
    size = tokenizer.model_max_length - 2
    ids = tokenizer(text, add_special_tokens=False, truncation=False, verbose=False)["input_ids"]
    pieces = [ids[i : i + size] for i in range(0, len(ids), size)] or [[]]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    return [[tokenizer.bos_token_id, *p, tokenizer.eos_token_id] + [pad] * (size - len(p)) for p in pieces]


def count_chunks(tokenizer: Any, texts: list[str]) -> int:
    return max(len(chunk_ids(tokenizer, t)) for t in set(texts))


def encode(pipe: Any, family: FamilySpec, prompts: list[str], negatives: list[str]) -> Embeddings:
    """Encode a batch of prompts and negative prompts to the same number of chunks."""
    tokenizers = [getattr(pipe, name) for name in family.tokenizers]
    chunks = max(count_chunks(tokenizers[0], prompts + negatives), 1)
    if family.pooled:
        pos, pooled = _encode_sdxl(pipe, prompts, chunks)
        if not any(negatives) and pipe.config.get("force_zeros_for_empty_prompt", True):
            import torch

            return Embeddings(pos, torch.zeros_like(pos), pooled, torch.zeros_like(pooled), chunks)
        neg, neg_pooled = _encode_sdxl(pipe, negatives, chunks)
        return Embeddings(pos, neg, pooled, neg_pooled, chunks)
    pos = _encode_single(pipe, prompts, chunks)
    neg = _encode_single(pipe, negatives, chunks)
    return Embeddings(pos, neg, chunks=chunks)


def _ids(tokenizer: Any, texts: list[str], chunks: int, device) -> Any:
    """(B, chunks, 77) token ids; short prompts get extra empty chunks."""
    import torch

    chunked = {text: chunk_ids(tokenizer, text) for text in {*texts, ""}}  # each distinct text tokenized once
    empty = chunked[""][0]
    rows = [chunked[t] + [empty] * (chunks - len(chunked[t])) for t in texts]
    return torch.tensor(rows, device=device)


def _encode_single(pipe: Any, texts: list[str], chunks: int) -> Any:
    """SD 1.x / 2.x: the encoder's last hidden state per chunk, chunks joined along the sequence."""
    ids = _ids(pipe.tokenizer, texts, chunks, execution_device(pipe))
    b, c, t = ids.shape
    hidden = pipe.text_encoder(ids.reshape(b * c, t))[0]  # (B*C, 77, D)
    return hidden.reshape(b, c * t, -1).to(pipe.text_encoder.dtype)  # (B, C*77, D)


def _encode_sdxl(pipe: Any, texts: list[str], chunks: int) -> tuple[Any, Any]:
    """SDXL: penultimate hidden states of both encoders side by side; pooled output of the second."""
    import torch

    hidden_states, pooled = [], None
    for tokenizer, encoder in ((pipe.tokenizer, pipe.text_encoder), (pipe.tokenizer_2, pipe.text_encoder_2)):
        ids = _ids(tokenizer, texts, chunks, execution_device(pipe))
        b, c, t = ids.shape
        out = encoder(ids.reshape(b * c, t), output_hidden_states=True)
        hidden_states.append(out.hidden_states[-2].reshape(b, c * t, -1))  # (B, C*77, D_i)
        if encoder is pipe.text_encoder_2:
            pooled = out[0].reshape(b, c, -1)[:, 0]  # (B, D2): pooled embedding of the first chunk
    dtype = pipe.text_encoder_2.dtype
    return torch.cat([h.to(dtype) for h in hidden_states], dim=-1), pooled.to(dtype)
