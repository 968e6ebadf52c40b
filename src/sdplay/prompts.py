"""Prompt encoding as A1111 does it: 75-token chunks (never silently cut), emphasis weights, BREAK, and one
conditioning per range of steps for prompt editing and alternation."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
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
    """One text as chunks of token ids and per-token emphasis, each chunk wrapped in BOS/EOS and padded; `fixes`
    lists, per chunk, where an embedding's vectors go: (position in the chunk, embedding name)."""

    ids: list[list[int]]
    weights: list[list[float]]
    fixes: list[list[tuple[int, str]]] = field(default_factory=list)

    @property
    def weighted(self) -> bool:
        return any(w != 1.0 for chunk in self.weights for w in chunk)


PLACEHOLDER = 0  # the token id under an embedding's vectors (A1111's too): never BOS/EOS, so pooling is unchanged


@dataclass(frozen=True)
class Vocab:
    """Textual-inversion names as token-id sequences of one tokenizer, with the vectors each one takes."""

    by_first: dict[int, list[tuple[tuple[int, ...], str, int]]]

    @classmethod
    def build(cls, tokenizer: Any, counts: dict[str, int]) -> Vocab:
        """`counts`: embedding name -> number of vectors."""
        by_first: dict[int, list[tuple[tuple[int, ...], str, int]]] = {}
        for name, count in counts.items():
            ids = tuple(tokenizer(name, add_special_tokens=False, truncation=False, verbose=False)["input_ids"])
            if ids:
                by_first.setdefault(ids[0], []).append((ids, name, count))
        for entries in by_first.values():
            entries.sort(key=lambda e: -len(e[0]))  # the longest name first, as A1111 looks them up
        return cls(by_first)

    def match(self, tokens: list[int], at: int) -> tuple[str, int, int] | None:
        """(name, tokens it spans, vectors it takes) of the embedding whose name starts at `tokens[at]`."""
        for ids, name, count in self.by_first.get(tokens[at], ()):
            if tuple(tokens[at : at + len(ids)]) == ids:
                return name, len(ids), count
        return None


def tokenize(tokenizer: Any, text: str, vocab: Vocab | None = None) -> Tokens:
    """Chunks of (max_length - 2) tokens; BREAK starts a new chunk; emphasis gives each token its weight; an
    embedding's name becomes its vectors' places (moved whole to the next chunk if it does not fit, as A1111)."""
    size = tokenizer.model_max_length - 2
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    ids: list[list[int]] = []
    weights: list[list[float]] = []
    fixes: list[list[tuple[int, str]]] = []
    cur: list[int] = []
    cur_w: list[float] = []
    cur_f: list[tuple[int, str]] = []

    def close() -> None:
        ids.append([tokenizer.bos_token_id, *cur, tokenizer.eos_token_id] + [pad] * (size - len(cur)))
        weights.append([1.0, *cur_w, 1.0] + [1.0] * (size - len(cur)))
        fixes.append(list(cur_f))
        cur.clear()
        cur_w.clear()
        cur_f.clear()

    for piece, weight in parse_attention(text):
        if piece == BREAK and weight == -1.0:
            close()
            continue
        tokens = tokenizer(piece, add_special_tokens=False, truncation=False, verbose=False)["input_ids"]
        at = 0
        while at < len(tokens):
            hit = vocab.match(tokens, at) if vocab is not None else None
            if hit is None:
                if len(cur) == size:
                    close()
                cur.append(tokens[at])
                cur_w.append(weight)
                at += 1
                continue
            name, spans, count = hit
            if len(cur) + count > size:
                close()
            cur_f.append((len(cur) + 1, name))  # + 1: after BOS
            cur.extend([PLACEHOLDER] * count)
            cur_w.extend([weight] * count)
            at += spans
    if cur or not ids:
        close()
    return Tokens(ids, weights, fixes)


def chunk_ids(tokenizer: Any, text: str, vocab: Vocab | None = None) -> list[list[int]]:
    """Token ids in chunks of (max_length - 2), each wrapped in BOS/EOS and padded to max_length."""
    return tokenize(tokenizer, text, vocab).ids


def count_chunks(tokenizer: Any, texts: list[str], vocab: Vocab | None = None) -> int:
    return max(len(chunk_ids(tokenizer, t, vocab)) for t in set(texts))


@dataclass
class Inversions:
    """The textual-inversion vectors a batch uses: name -> one (n, width) tensor per text encoder."""

    vectors: dict[str, tuple[Any, ...]]
    _vocabs: dict[int, Vocab] = field(default_factory=dict)

    def vocab(self, tokenizer: Any) -> Vocab:
        key = id(tokenizer)
        if key not in self._vocabs:
            self._vocabs[key] = Vocab.build(tokenizer, {n: int(v[0].shape[0]) for n, v in self.vectors.items()})
        return self._vocabs[key]


def _vocab(inv: Inversions | None, tokenizer: Any) -> Vocab | None:
    return inv.vocab(tokenizer) if inv is not None and inv.vectors else None


def encode(
    pipe: Any,
    family: FamilySpec,
    prompts: list[str],
    negatives: list[str],
    steps: int = 1,
    clip_skip: int = 1,
    inversions: Inversions | None = None,
) -> Embeddings:
    """Encode a batch of prompts and negative prompts to the same number of chunks.

    Prompt editing and alternation give one conditioning per range of steps, in `schedule` of the result
    (the result itself is the conditioning of the first step). `inversions`: the embeddings whose names the
    prompts may use.
    """
    groups = step_groups([schedule(t, steps) for t in prompts + negatives])
    vocab = _vocab(inversions, pipe.tokenizer)
    chunks = max(count_chunks(pipe.tokenizer, [t for _, texts in groups for t in texts], vocab), 1)
    n = len(prompts)
    parts = [(last, _encode_texts(pipe, family, list(texts[:n]), list(texts[n:]), chunks, clip_skip, inversions))
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


def _encode_texts(
    pipe: Any, family: FamilySpec, prompts: list[str], negatives: list[str], chunks: int, skip: int, inv=None
) -> Embeddings:
    if family.pooled:
        pos, pooled = _encode_sdxl(pipe, prompts, chunks, skip, inv)
        if not any(negatives) and pipe.config.get("force_zeros_for_empty_prompt", True):
            import torch

            return Embeddings(pos, torch.zeros_like(pos), pooled, torch.zeros_like(pooled), chunks)
        neg, neg_pooled = _encode_sdxl(pipe, negatives, chunks, skip, inv)
        return Embeddings(pos, neg, pooled, neg_pooled, chunks)
    pos = _encode_single(pipe, prompts, chunks, skip, inv)
    neg = _encode_single(pipe, negatives, chunks, skip, inv)
    return Embeddings(pos, neg, chunks=chunks)


def _ids(tokenizer: Any, texts: list[str], chunks: int, device, vocab: Vocab | None = None) -> tuple[Any, Any, list]:
    """(B, chunks, 77) token ids, their weights (None when all are 1) and the embeddings' places (row of the
    flattened (B*chunks) batch, position, name); short prompts get extra empty chunks."""
    import torch

    tokens = {text: tokenize(tokenizer, text, vocab) for text in {*texts, ""}}  # each distinct text tokenized once
    empty = tokens[""]
    ids = [tokens[t].ids + empty.ids * (chunks - len(tokens[t].ids)) for t in texts]
    fixes = [(b * chunks + c, pos, name) for b, t in enumerate(texts)
             for c, chunk in enumerate(tokens[t].fixes) for pos, name in chunk]  # fmt: skip
    if not any(tokens[t].weighted for t in texts):
        return torch.tensor(ids, device=device), None, fixes
    weights = [tokens[t].weights + empty.weights * (chunks - len(tokens[t].weights)) for t in texts]
    return torch.tensor(ids, device=device), torch.tensor(weights, device=device), fixes


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


@contextmanager
def spliced(encoder: Any, fixes: list, vectors: dict[str, Any]) -> Iterator[None]:
    """The encoder with embedding vectors in place of the token-table rows at `fixes` (row, position, name), for
    one call: a forward hook on its token table; a captured CUDA graph of the encoder is bypassed meanwhile."""
    if not fixes:
        yield
        return

    def put(_module, _args, out):
        out = out.clone()
        for row, pos, name in fixes:
            vec = vectors[name]
            out[row, pos : pos + vec.shape[0]] = vec.to(out.device, out.dtype)
        return out

    handle = encoder.get_input_embeddings().register_forward_hook(put)
    graphed = encoder.__dict__.get("forward")
    was = getattr(graphed, "enabled", None)
    if was is not None:
        graphed.enabled = False
    try:
        yield
    finally:
        handle.remove()
        if was is not None:
            graphed.enabled = was


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


def _encode_single(pipe: Any, texts: list[str], chunks: int, skip: int = 1, inv: Inversions | None = None) -> Any:
    """SD 1.x / 2.x: the encoder's last hidden state per chunk, chunks joined along the sequence."""
    ids, weights, fixes = _ids(pipe.tokenizer, texts, chunks, execution_device(pipe), _vocab(inv, pipe.tokenizer))
    b, c, t = ids.shape
    vectors = {name: v[0] for name, v in inv.vectors.items()} if inv is not None else {}
    with spliced(pipe.text_encoder, fixes, vectors):
        hidden, _ = _hidden(pipe.text_encoder, ids.reshape(b * c, t), skip, sdxl=False)  # (B*C, 77, D)
    hidden = apply_emphasis(hidden, None if weights is None else weights.reshape(b * c, t))
    return hidden.reshape(b, c * t, -1).to(pipe.text_encoder.dtype)  # (B, C*77, D)


def _encode_sdxl(pipe: Any, texts: list[str], chunks: int, skip: int = 1, inv: Inversions | None = None):
    """SDXL: penultimate hidden states of both encoders side by side; pooled output of the second (embeddings give
    each encoder its own vectors: clip_l, clip_g)."""
    import torch

    hidden_states, pooled = [], None
    pairs = ((pipe.tokenizer, pipe.text_encoder), (pipe.tokenizer_2, pipe.text_encoder_2))
    for k, (tokenizer, encoder) in enumerate(pairs):
        ids, weights, fixes = _ids(tokenizer, texts, chunks, execution_device(pipe), _vocab(inv, tokenizer))
        b, c, t = ids.shape
        vectors = {name: v[k] for name, v in inv.vectors.items()} if inv is not None else {}
        with spliced(encoder, fixes, vectors):
            hidden, first = _hidden(encoder, ids.reshape(b * c, t), skip, sdxl=True)
        hidden = apply_emphasis(hidden, None if weights is None else weights.reshape(b * c, t))
        hidden_states.append(hidden.reshape(b, c * t, -1))  # (B, C*77, D_i)
        if encoder is pipe.text_encoder_2:
            pooled = first.reshape(b, c, -1)[:, 0]  # (B, D2): pooled embedding of the first chunk
    dtype = pipe.text_encoder_2.dtype
    return torch.cat([h.to(dtype) for h in hidden_states], dim=-1), pooled.to(dtype)
