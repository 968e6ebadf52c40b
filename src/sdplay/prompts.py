"""Prompt encoding as A1111 does it: 75-token chunks (never silently cut), emphasis weights, BREAK, and one
conditioning per range of steps for prompt editing and alternation."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sdplay.families import FamilySpec
from sdplay.prompt_syntax import BREAK, parse_attention, schedule


@dataclass
class Embeddings:
    """Text conditioning for a batch, ready to pass to the pipeline."""

    prompt: Any  # (B, 77 * chunks, D)
    negative: Any  # (B, 77 * chunks, D)
    pooled: Any = None  # (B, D2), SDXL only
    negative_pooled: Any = None
    chunks: int = 1
    schedule: list[tuple[int, Embeddings]] = field(default_factory=list)  # (last step, conditioning), editing only

    def pipeline_kwargs(self) -> dict[str, Any]:
        kwargs = {"prompt_embeds": self.prompt, "negative_prompt_embeds": self.negative}
        if self.pooled is not None:
            kwargs |= {"pooled_prompt_embeds": self.pooled, "negative_pooled_prompt_embeds": self.negative_pooled}
        return kwargs

    def at(self, step: int) -> Embeddings:
        """The conditioning for 0-based sampling step `step` (A1111: the first range whose last step >= step)."""
        for last, emb in self.schedule:
            if step <= last:
                return emb
        return self.schedule[-1][1] if self.schedule else self

    def step_inputs(self, step: int, guidance: bool) -> dict[str, Any]:
        """The pipeline's in-loop tensors for `step`: negative and positive side by side under guidance."""
        import torch

        emb = self.at(step)
        out = {"prompt_embeds": torch.cat([emb.negative, emb.prompt]) if guidance else emb.prompt}
        if emb.pooled is not None:
            out["add_text_embeds"] = torch.cat([emb.negative_pooled, emb.pooled]) if guidance else emb.pooled
        return out


def execution_device(pipe: Any) -> Any:
    """The device the pipeline computes on, looked up once: diffusers' property walks every module on each call."""
    device = pipe.__dict__.get("sdplay_execution_device")
    if device is None:
        device = pipe.sdplay_execution_device = pipe._execution_device
    return device


@dataclass(frozen=True)
class Tokens:
    """One text as chunks of token ids and per-token emphasis, each chunk wrapped in BOS/EOS and padded."""

    ids: list[list[int]]
    weights: list[list[float]]

    @property
    def weighted(self) -> bool:
        return any(w != 1.0 for chunk in self.weights for w in chunk)


def tokenize(tokenizer: Any, text: str) -> Tokens:
    """Chunks of (max_length - 2) tokens; BREAK starts a new chunk; emphasis gives each token its weight."""
    size = tokenizer.model_max_length - 2
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    ids: list[list[int]] = []
    weights: list[list[float]] = []
    cur: list[int] = []
    cur_w: list[float] = []

    def close() -> None:
        ids.append([tokenizer.bos_token_id, *cur, tokenizer.eos_token_id] + [pad] * (size - len(cur)))
        weights.append([1.0, *cur_w, 1.0] + [1.0] * (size - len(cur)))
        cur.clear()
        cur_w.clear()

    for piece, weight in parse_attention(text):
        if piece == BREAK and weight == -1.0:
            close()
            continue
        for token in tokenizer(piece, add_special_tokens=False, truncation=False, verbose=False)["input_ids"]:
            if len(cur) == size:
                close()
            cur.append(token)
            cur_w.append(weight)
    if cur or not ids:
        close()
    return Tokens(ids, weights)


def chunk_ids(tokenizer: Any, text: str) -> list[list[int]]:
    """Token ids in chunks of (max_length - 2), each wrapped in BOS/EOS and padded to max_length."""
    return tokenize(tokenizer, text).ids


def count_chunks(tokenizer: Any, texts: list[str]) -> int:
    return max(len(chunk_ids(tokenizer, t)) for t in set(texts))


def encode(
    pipe: Any, family: FamilySpec, prompts: list[str], negatives: list[str], steps: int = 1, clip_skip: int = 1
) -> Embeddings:
    """Encode a batch of prompts and negative prompts to the same number of chunks.

    Prompt editing and alternation give one conditioning per range of steps, in `schedule` of the result
    (the result itself is the conditioning of the first step).
    """
    groups = step_groups([schedule(t, steps) for t in prompts + negatives])
    chunks = max(count_chunks(pipe.tokenizer, [t for _, texts in groups for t in texts]), 1)
    n = len(prompts)
    parts = [(last, _encode_texts(pipe, family, list(texts[:n]), list(texts[n:]), chunks, clip_skip))
             for last, texts in groups]  # fmt: skip
    first = parts[0][1]
    if len(parts) > 1:
        first.schedule = parts
    return first


def step_groups(schedules: list[list[tuple[int, str]]]) -> list[tuple[int, tuple[str, ...]]]:
    """[(last step, the text of every row), ...] over the union of the rows' step boundaries, equal runs merged."""
    bounds = sorted({last for sched in schedules for last, _ in sched})
    groups: list[tuple[int, tuple[str, ...]]] = []
    for bound in bounds:
        texts = tuple(next((t for last, t in sched if last >= bound), sched[-1][1]) for sched in schedules)
        if groups and groups[-1][1] == texts:
            groups[-1] = (bound, texts)
        else:
            groups.append((bound, texts))
    return groups


def _encode_texts(pipe: Any, family: FamilySpec, prompts: list[str], negatives: list[str], chunks: int, skip: int):
    if family.pooled:
        pos, pooled = _encode_sdxl(pipe, prompts, chunks, skip)
        if not any(negatives) and pipe.config.get("force_zeros_for_empty_prompt", True):
            import torch

            return Embeddings(pos, torch.zeros_like(pos), pooled, torch.zeros_like(pooled), chunks)
        neg, neg_pooled = _encode_sdxl(pipe, negatives, chunks, skip)
        return Embeddings(pos, neg, pooled, neg_pooled, chunks)
    pos = _encode_single(pipe, prompts, chunks, skip)
    neg = _encode_single(pipe, negatives, chunks, skip)
    return Embeddings(pos, neg, chunks=chunks)


def _ids(tokenizer: Any, texts: list[str], chunks: int, device) -> tuple[Any, Any]:
    """(B, chunks, 77) token ids and their weights (None when all are 1); short prompts get extra empty chunks."""
    import torch

    tokens = {text: tokenize(tokenizer, text) for text in {*texts, ""}}  # each distinct text tokenized once
    empty = tokens[""]
    ids = [tokens[t].ids + empty.ids * (chunks - len(tokens[t].ids)) for t in texts]
    if not any(tokens[t].weighted for t in texts):
        return torch.tensor(ids, device=device), None
    weights = [tokens[t].weights + empty.weights * (chunks - len(tokens[t].weights)) for t in texts]
    return torch.tensor(ids, device=device), torch.tensor(weights, device=device)


def apply_emphasis(hidden: Any, weights: Any) -> Any:
    """A1111's emphasis: scale each token's embedding by its weight, then restore each chunk's original mean."""
    if weights is None:
        return hidden
    import torch

    original = hidden.mean(dim=(1, 2), keepdim=True)
    scaled = hidden * weights.to(hidden.dtype).unsqueeze(-1)
    new = scaled.mean(dim=(1, 2), keepdim=True)
    # a mean of ~0 (an untrained encoder's layer norm) cannot be restored by a ratio: leave such chunks scaled
    usable = new.abs() > 1e-4 * hidden.abs().mean(dim=(1, 2), keepdim=True)
    return scaled * torch.where(usable, original / torch.where(usable, new, 1.0), 1.0)


def _hidden(encoder: Any, ids: Any, skip: int, sdxl: bool) -> Any:
    """The encoder's hidden states A1111 uses: the last layer (SD 1.x/2.x) or the penultimate one (SDXL), `skip`
    - 1 layers earlier on request; SD 1.x/2.x earlier layers get the final layer norm, as A1111 applies it."""
    if sdxl:
        out = encoder(ids, output_hidden_states=True)
        return out.hidden_states[-1 - skip], out[0]
    if skip <= 1:
        return encoder(ids)[0], None
    out = encoder(ids, output_hidden_states=True)
    norm = getattr(encoder, "text_model", encoder).final_layer_norm  # transformers 4 nests it, 5 does not
    return norm(out.hidden_states[-skip]), None


def _encode_single(pipe: Any, texts: list[str], chunks: int, skip: int = 1) -> Any:
    """SD 1.x / 2.x: the encoder's last hidden state per chunk, chunks joined along the sequence."""
    ids, weights = _ids(pipe.tokenizer, texts, chunks, execution_device(pipe))
    b, c, t = ids.shape
    hidden, _ = _hidden(pipe.text_encoder, ids.reshape(b * c, t), skip, sdxl=False)  # (B*C, 77, D)
    hidden = apply_emphasis(hidden, None if weights is None else weights.reshape(b * c, t))
    return hidden.reshape(b, c * t, -1).to(pipe.text_encoder.dtype)  # (B, C*77, D)


def _encode_sdxl(pipe: Any, texts: list[str], chunks: int, skip: int = 1) -> tuple[Any, Any]:
    """SDXL: penultimate hidden states of both encoders side by side; pooled output of the second."""
    import torch

    hidden_states, pooled = [], None
    for tokenizer, encoder in ((pipe.tokenizer, pipe.text_encoder), (pipe.tokenizer_2, pipe.text_encoder_2)):
        ids, weights = _ids(tokenizer, texts, chunks, execution_device(pipe))
        b, c, t = ids.shape
        hidden, first = _hidden(encoder, ids.reshape(b * c, t), skip, sdxl=True)
        hidden = apply_emphasis(hidden, None if weights is None else weights.reshape(b * c, t))
        hidden_states.append(hidden.reshape(b, c * t, -1))  # (B, C*77, D_i)
        if encoder is pipe.text_encoder_2:
            pooled = first.reshape(b, c, -1)[:, 0]  # (B, D2): pooled embedding of the first chunk
    dtype = pipe.text_encoder_2.dtype
    return torch.cat([h.to(dtype) for h in hidden_states], dim=-1), pooled.to(dtype)
