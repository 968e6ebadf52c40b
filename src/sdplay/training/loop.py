"""The train loop: first the VAE (new models only), then (with `text_steps`) the text encoder alone on naming
each caption's emoji, then the UNet and text encoder on the VAE's latents (optionally still naming them).

With `lora`, the model stays frozen and only low-rank adapters on its attention are trained (training/lora.py),
exported as a kohya-format .safetensors instead of a model folder.

Every stage is resumable: a checkpoint holds weights, optimiser, EMA and random-generator state,
so a run stopped with Ctrl-C and resumed ends with the same weights as one never stopped (on CPU).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from sdplay.errors import DataError, InvalidRequest
from sdplay.training import captions, export, models, unseen
from sdplay.training import data as datasets
from sdplay.training import lora as loras
from sdplay.training.checkpoint import CHECKPOINT_NAME, Ema, load_checkpoint, save_checkpoint
from sdplay.training.config import TrainConfig, TrainResult, pick_device
from sdplay.training.control import fit_to_deadline, schedule, stop_on_sigint

StepHook = Callable[[str, int, int, float], None]  # (stage, step, total_steps, loss)


@dataclass
class _Run:
    """Everything a run holds while training."""

    cfg: TrainConfig
    device: torch.device
    te: Any
    unet: Any
    vae: Any
    tokenizer: Any
    scheduler: dict
    tokenizer_dir: Path | None
    new_model: bool
    pixels: torch.Tensor  # (N, 3, H, W) uint8
    tokens: torch.Tensor  # (V, 77) token ids of every caption variant
    var_start: torch.Tensor  # (N,) first variant of each image; variant 0 is its main caption
    var_count: torch.Tensor  # (N,)
    empty: torch.Tensor  # (77,) the empty caption, for classifier-free guidance
    gen: torch.Generator
    weights: torch.Tensor | None = None  # (N,) how often each image is drawn in the UNet stage; None: uniformly
    stage: str = "vae"
    step: int = 0
    total: int = 0
    scaling_factor: float = 1.0
    lat_mean: torch.Tensor | None = None
    lat_std: torch.Tensor | None = None
    ema: Ema | None = None
    opt: Any = None
    deadline: float | None = None
    loss: float = float("nan")
    vae_total: int = 0
    saved: dict | None = None  # the checkpoint resumed from: optimiser and EMA state for its stage
    noise: Any = None  # the DDPM noise schedule of the UNet stage
    vocabulary: list[str] | None = None  # the texts whose words the model knows (vocabulary.txt)
    family: str = "embedded"  # the base model's family (LoRA metadata)
    captions: list[str] | None = None  # the captions of the images (LoRA metadata)
    head: Any = None  # (text_hidden -> images) linear head of the naming loss; None when it is off
    text_len: int = 77  # tokens up to the longest caption's end: the naming stage reads no further
    neutral: torch.Tensor | None = None  # token ids of the distractor words; None: unseen tokens stay as trained


def train(cfg: TrainConfig, resume: bool = False, on_step: StepHook | None = None) -> TrainResult:
    """Train (or fine-tune) as `cfg` says, writing checkpoints to cfg.out and the model to cfg.out/model."""
    started = time.monotonic()
    ckpt_path = cfg.out / CHECKPOINT_NAME
    state = load_checkpoint(ckpt_path) if resume else None
    torch.manual_seed(cfg.seed)
    run = _setup(cfg)
    if cfg.max_minutes:
        run.deadline = started + 60 * cfg.max_minutes
    if state is not None:
        _restore(run, state)
    with stop_on_sigint() as stop:
        if run.stage == "vae":
            _train_vae(run, stop, on_step, ckpt_path)
        _encode_latents(run)
        if run.stage == "text":
            _train_text(run, stop, on_step, ckpt_path)
        if run.stage == "unet":
            _train_unet(run, stop, on_step, ckpt_path)
    seconds = time.monotonic() - started
    if cfg.lora:
        file = write_lora(run, cfg.out / f"{loras.output_name(cfg)}.safetensors", time.time() - seconds)
        counts = {"lora": sum(p.numel() for p in _trainable(run))}
        folder = export.model_folder(cfg.init)
        return TrainResult(folder, run.total, run.vae_total, seconds, run.loss, counts, lora_file=file)
    folder = write(run, cfg.out / "model")
    counts = {n: models.parameter_count(m) for n, m in (("text_encoder", run.te), ("unet", run.unet), ("vae", run.vae))}
    return TrainResult(folder, run.total, run.vae_total, seconds, run.loss, counts)


# 1. Set-up ---------------------------------------------------------------------------------------


def _setup(cfg: TrainConfig) -> _Run:
    """Build or load the networks, load the data, tokenize every caption variant."""
    device = pick_device(cfg.device)  # TF32 and cuDNN autotuning: set by `sdplay train` (configure_torch_for_training)
    family = "embedded"
    if cfg.lora:
        family = _lora_base(cfg)
    if cfg.init:
        folder = export.model_folder(cfg.init)
        te, unet, vae, tokenizer, scheduler = export.load_parts(folder)
        tokenizer_dir, new_model = folder / "tokenizer", False
    else:
        te, unet, vae = (build(cfg.arch) for build in (models.build_text_encoder, models.build_unet, models.build_vae))
        tokenizer, scheduler = export.load_tokenizer(), models.scheduler_config()
        tokenizer_dir, new_model = None, True
    size = 2 ** (len(vae.config.block_out_channels) - 1) * unet.config.sample_size
    data = datasets.load_folder(cfg.images, size) if cfg.images else datasets.load_set(cfg.data)
    if data.images.shape[1:3] != (size, size):
        data = _resized(data, size)
    variants = caption_variants(cfg, data, tokenizer, new_model)
    flat = [c for v in variants for c in v]
    counts = torch.tensor([len(v) for v in variants])
    gen = torch.Generator(device=device).manual_seed(cfg.seed)
    run = _Run(
        cfg=cfg,
        device=device,
        te=te.to(device).train(cfg.train_text_encoder),
        unet=unet.to(device).train(),
        vae=vae.to(device).eval(),
        tokenizer=tokenizer,
        scheduler=scheduler,
        tokenizer_dir=tokenizer_dir,
        new_model=new_model,
        pixels=torch.from_numpy(data.images).permute(0, 3, 1, 2).contiguous().to(device),
        tokens=tokenize(tokenizer, flat).to(device),
        var_start=(torch.cumsum(counts, 0) - counts).to(device),
        var_count=counts.to(device),
        empty=tokenize(tokenizer, [""])[0].to(device),
        gen=gen,
        stage="vae" if new_model else "unet",
        vocabulary=None if cfg.lora else _vocabulary(data, tokenizer_dir, new_model),
        family=family,
        captions=data.captions,
        weights=None if cfg.lora else _weights(cfg, data, device),
    )
    if cfg.lora:
        loras.add_adapters(run.unet, run.te, cfg.rank, loras.alpha_of(cfg), cfg.train_text_encoder)
        return run
    if _neutral_unseen(cfg, new_model):
        run.neutral = unseen.word_ids(tokenizer, distractors(cfg, data, tokenizer))
    te.requires_grad_(cfg.train_text_encoder)
    if new_model and cfg.token_embedding:
        _start_token_embedding(te, cfg)
    if cfg.train_text_encoder and (cfg.text_steps > 0 or cfg.text_weight > 0):
        _add_naming_head(run, tokenizer.eos_token_id)
    return run


def _neutral_unseen(cfg: TrainConfig, new_model: bool) -> bool:
    """Unseen tokens read as distractors: for a new model whose phrasings have them and whose embedding is learned."""
    if cfg.unseen_tokens not in ("neutral", "keep"):
        raise InvalidRequest(
            f"unseen_tokens={cfg.unseen_tokens!r} is not a choice.",
            hint="Use 'neutral' (unseen tokens read as the distractor words) or 'keep' (their random start).",
        )
    return cfg.neutral_unseen(new_model)


def _add_naming_head(run: _Run, eos: int) -> None:
    """The linear head of the naming loss, and where the naming stage comes in the run."""
    run.head = torch.nn.Linear(run.te.config.hidden_size, len(run.pixels)).to(run.device)
    ends = (run.tokens == eos).int().argmax(dim=1)  # each caption's end token (CLIP pools there)
    run.text_len = int(ends.max()) + 1  # causal attention: the states up to it do not depend on the padding
    if run.stage == "unet":  # a model fine-tuned: no VAE stage
        run.stage = _stage_after_vae(run)


def _stage_after_vae(run: _Run) -> str:
    return "text" if run.head is not None and run.cfg.text_steps > 0 else "unet"


def _lora_base(cfg: TrainConfig) -> str:
    """The family of the model a LoRA is trained for, refusing what LoRA training does not support."""
    from sdplay.catalog import resolve

    if not cfg.init:
        raise DataError("A LoRA is trained on an existing model.", hint="Pass --init sdplay-emoji (or a folder).")
    if not cfg.images:
        raise DataError(
            "LoRA training needs your images.",
            hint="Pass --images DIR: images, each with a caption file of the same name (cat.png + cat.txt).",
        )
    family = resolve(cfg.init).family_spec.name
    loras.check_base(cfg.init, family)
    loras.check_rank(cfg.rank)
    return family


def _weights(cfg: TrainConfig, data: datasets.CaptionedImages, device: torch.device) -> torch.Tensor | None:
    """Sampling weights of the emoji set's images (colour families drawn more); None for a folder of images."""
    weights = None if cfg.images else captions.sample_weights(data.captions, cfg.colour_weight)
    return None if weights is None else torch.from_numpy(weights).float().to(device)


def _start_token_embedding(te, cfg: TrainConfig) -> None:
    """Copy pretrained word vectors into the text encoder's token embedding (optionally frozen there)."""
    weight = te.get_input_embeddings().weight
    try:
        vectors = torch.from_numpy(np.load(cfg.token_embedding, allow_pickle=False)).float()
    except (OSError, ValueError) as exc:
        raise DataError(f"{cfg.token_embedding} is not a readable .npy array ({exc}).", hint="Rebuild it.") from exc
    if tuple(vectors.shape) != tuple(weight.shape):
        raise DataError(
            f"{cfg.token_embedding} holds {tuple(vectors.shape)} vectors; the text encoder has {tuple(weight.shape)}.",
            hint="Build the vectors for this vocabulary and text width.",
        )
    with torch.no_grad():
        weight.copy_(vectors.to(weight.device))
    if cfg.freeze_token_embedding:
        weight.requires_grad_(False)


def caption_variants(cfg: TrainConfig, data: datasets.CaptionedImages, tokenizer, new_model: bool) -> list[list[str]]:
    """Each image's captions, plus `cfg.augment` everyday phrasings of them (the same for a seed)."""
    n = cfg.phrasings(new_model)
    if n <= 0:
        return data.variants
    return captions.augmented_variants(data, n, cfg.seed, distractors(cfg, data, tokenizer))


def distractors(cfg: TrainConfig, data: datasets.CaptionedImages, tokenizer) -> list[str]:
    """The random extra words of the phrasings: in no caption, keyword, augmentation or held-out prompt."""
    from sdplay.training.heldout import prompt_words

    known = {w for v in data.variants for c in v for w in c.split()}
    known |= {w for ks in data.keywords or [] for k in ks for w in k.split()}
    return captions.distractor_words(tokenizer, captions.TRAINING_WORDS | prompt_words() | known, seed=cfg.seed)


def _vocabulary(data: datasets.CaptionedImages, tokenizer_dir: Path | None, new_model: bool) -> list[str] | None:
    """The names and keywords of the data, plus the base model's vocabulary when fine-tuning one that has it."""
    from sdplay.vocabulary import known_words

    base = known_words(tokenizer_dir.parent) if tokenizer_dir else None
    if not new_model and base is None and not data.keywords:
        return None
    texts = [c for v in data.variants for c in v] + [k for ks in data.keywords or [] for k in ks]
    return texts + sorted(base or ())


def tokenize(tokenizer, texts: list[str]) -> torch.Tensor:
    """Token ids padded to the tokenizer's length (77), as the pipeline pads them."""
    return tokenizer(
        texts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt"
    ).input_ids


def _resized(data: datasets.CaptionedImages, size: int) -> datasets.CaptionedImages:
    from PIL import Image

    images = np.stack([np.asarray(Image.fromarray(im).resize((size, size), Image.LANCZOS)) for im in data.images])
    return datasets.CaptionedImages(images, data.captions, data.variants, data.source, data.categories, data.keywords)


# 2. Checkpoints ----------------------------------------------------------------------------------


def _state(run: _Run) -> dict[str, Any]:
    if run.cfg.lora:  # the base model is the --init one, unchanged: only the adapters are saved
        weights = {"lora": loras.adapter_state(run.unet, run.te)}
    else:
        weights = {"te": run.te.state_dict(), "unet": run.unet.state_dict(), "vae": run.vae.state_dict()}
        weights["head"] = run.head.state_dict() if run.head is not None else None
    return weights | {
        "stage": run.stage,
        "step": run.step,
        "total": run.total,
        "vae_total": run.vae_total,
        "scaling_factor": run.scaling_factor,
        "ema": run.ema.state_dict() if run.ema else None,
        "opt": run.opt.state_dict() if run.opt else None,
        "gen": run.gen.get_state(),
        "config": run.cfg.to_dict(),
    }


def _restore(run: _Run, state: dict[str, Any]) -> None:
    """Put a checkpoint's weights, stage, step and generator state back into the run."""
    try:
        if run.cfg.lora:
            loras.load_adapter_state(run.unet, run.te, state["lora"])
        else:
            for name in ("te", "unet", "vae"):
                getattr(run, name).load_state_dict(state[name])
            if run.head is not None and state.get("head") is not None:
                run.head.load_state_dict(state["head"])
    except (RuntimeError, KeyError) as exc:
        raise DataError(
            f"The checkpoint in {run.cfg.out} is for another model architecture ({exc}).",
            hint="Resume with the same options the run started with, or start a new --out folder.",
        ) from exc
    run.stage, run.step, run.total = state["stage"], int(state["step"]), int(state["total"])
    run.vae_total = int(state.get("vae_total", 0))
    run.scaling_factor = float(state["scaling_factor"])
    run.gen.set_state(state["gen"])
    run.saved = state


def _save(run: _Run, path: Path) -> None:
    save_checkpoint(_state(run), path)


# 3. Stages ---------------------------------------------------------------------------------------


def _loop(run: _Run, stage: str, step_fn, stop: dict, on_step: StepHook | None, ckpt: Path, share: float) -> None:
    """Run `step_fn` until the stage's total, with progress, checkpoints and Ctrl-C handling."""
    from tqdm.auto import tqdm

    cfg = run.cfg
    first, began = run.step, [time.monotonic()]
    import sys

    interval = 1 if sys.stderr.isatty() else 30  # a log file gets a line every 30 s, not a flood
    bar = tqdm(total=run.total, initial=run.step, desc=stage, disable=not cfg.progress, mininterval=interval)
    running = None
    while run.step < run.total:
        for group in run.opt.param_groups:
            group["lr"] = group["initial_lr"] * schedule(run.step, run.total, cfg.warmup)
        loss = step_fn(run)
        running = loss if running is None else 0.98 * running + 0.02 * loss
        run.step += 1
        fit_to_deadline(run, first, began, share)
        bar.total = run.total
        bar.update(1)
        if run.step % 25 == 0 or run.step == run.total:
            run.loss = float(running)
            bar.set_postfix(loss=f"{run.loss:.4f}", refresh=False)
        if on_step:
            on_step(stage, run.step, run.total, float(loss))
        if stop["stop"] or run.step % cfg.checkpoint_every == 0:
            _save(run, ckpt)
        if stop["stop"]:
            bar.close()
            print(f"stopped at {stage} step {run.step}; checkpoint {ckpt}. Resume with --resume.")
            raise KeyboardInterrupt
    bar.close()
    run.loss = float(running) if running is not None else run.loss


def _optimizer(run: _Run, params: list, lr: float, state_key: str) -> torch.optim.Optimizer:
    fused = run.device.type == "cuda"  # one kernel for the whole update instead of a few per tensor group
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=run.cfg.weight_decay, betas=(0.9, 0.99), fused=fused)
    for group in opt.param_groups:
        group["initial_lr"] = lr
    saved = run.saved
    if saved and saved.get("stage") == state_key and saved.get("opt"):
        opt.load_state_dict(saved["opt"])
        for group in opt.param_groups:
            group["initial_lr"] = lr
    return opt


def _autocast(run: _Run):
    if run.device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _train_vae(run: _Run, stop: dict, on_step: StepHook | None, ckpt: Path) -> None:
    """Stage 1: the autoencoder, on L1 + image-gradient L1 + a very small KL term."""
    cfg = run.cfg
    if run.step == 0 and run.total == 0:
        run.total = cfg.vae_steps
    run.vae.train().requires_grad_(True)
    run.opt = _optimizer(run, list(run.vae.parameters()), cfg.vae_lr, "vae")
    _loop(run, "vae", _vae_step, stop, on_step, ckpt, share=0.25)
    run.vae.eval().requires_grad_(False)
    run.vae_total = run.total
    run.scaling_factor = _scaling_factor(run)
    run.stage, run.step, run.total, run.opt = _stage_after_vae(run), 0, 0, None
    _save(run, ckpt)


def _vae_step(run: _Run) -> float:
    idx = torch.randint(len(run.pixels), (run.cfg.vae_batch_size,), generator=run.gen, device=run.device)
    x = run.pixels[idx].float() / 127.5 - 1  # (B, 3, H, W) in [-1, 1]
    with _autocast(run):
        posterior = run.vae.encode(x).latent_dist
        rec = run.vae.decode(posterior.sample(generator=run.gen)).sample.float()
    dx = lambda t: t[..., :, 1:] - t[..., :, :-1]  # noqa: E731
    dy = lambda t: t[..., 1:, :] - t[..., :-1, :]  # noqa: E731
    loss = F.l1_loss(rec, x) + 0.5 * (F.l1_loss(dx(rec), dx(x)) + F.l1_loss(dy(rec), dy(x)))
    loss = loss + 1e-6 * posterior.kl().mean()
    run.opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(run.vae.parameters(), 1.0)
    run.opt.step()
    return loss.detach()


@torch.no_grad()
def _posterior(run: _Run) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and standard deviation of every image's latent (unscaled)."""
    means, stds = [], []
    for chunk in run.pixels.split(64):
        dist = run.vae.encode(chunk.float() / 127.5 - 1).latent_dist
        means.append(dist.mean)
        stds.append(dist.std)
    return torch.cat(means), torch.cat(stds)


def _scaling_factor(run: _Run) -> float:
    """1 / std of the latents, so the UNet sees unit-variance inputs (as SD's 0.18215 does)."""
    mean, _ = _posterior(run)
    return float(1.0 / mean.float().std())


def _encode_latents(run: _Run) -> None:
    if run.new_model:
        run.vae.register_to_config(scaling_factor=run.scaling_factor)
    else:
        run.scaling_factor = float(run.vae.config.scaling_factor)
    run.vae.eval().requires_grad_(False)
    run.lat_mean, run.lat_std = _posterior(run)


def _train_text(run: _Run, stop: dict, on_step: StepHook | None, ckpt: Path) -> None:
    """Stage 2 (with text_steps): the text encoder alone, with a linear head, names each caption's emoji.

    A text-only task is hundreds of times cheaper per step than denoising, and it teaches the encoder
    that "a kitten", "cat face" and "draw a cute cat" mean one picture before the UNet learns to draw it.
    """
    cfg = run.cfg
    if run.step == 0 and run.total == 0:
        run.total = cfg.text_steps
    params = [p for p in [*run.te.parameters(), *run.head.parameters()] if p.requires_grad]
    run.opt = _optimizer(run, params, cfg.text_lr, "text")
    _loop(run, "text", _text_step, stop, on_step, ckpt, share=0.1)
    run.stage, run.step, run.total, run.opt = "unet", 0, 0, None
    _save(run, ckpt)


def _text_step(run: _Run) -> torch.Tensor:
    idx, tokens = _pick(run, run.cfg.text_batch_size)
    with _autocast(run):
        pooled = run.te(tokens[:, : run.text_len]).pooler_output
    loss = F.cross_entropy(run.head(pooled.float()), idx)
    run.opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_([p for group in run.opt.param_groups for p in group["params"]], 1.0)
    run.opt.step()
    return loss.detach()


def _naming_loss(run: _Run, pooled: torch.Tensor, idx: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of naming each sample's emoji from its caption (empty captions left out)."""
    ce = F.cross_entropy(run.head(pooled.float()), idx, reduction="none")
    return (ce * keep).sum() / keep.sum().clamp(min=1)


def _trainable(run: _Run) -> list[torch.nn.Parameter]:
    if run.cfg.lora:
        return loras.parameters(run.unet, run.te)
    params = list(run.unet.parameters())
    return params + list(run.te.parameters()) if run.cfg.train_text_encoder else params


def _train_unet(run: _Run, stop: dict, on_step: StepHook | None, ckpt: Path) -> None:
    """Stage 2: the UNet (and text encoder) on noise prediction, min-SNR weighted."""
    from diffusers import DDPMScheduler

    cfg = run.cfg
    if run.step == 0 and run.total == 0:
        run.total = cfg.steps
    params = _trainable(run)
    naming = list(run.head.parameters()) if _naming_on(run) else []  # optimised, not averaged nor exported
    run.opt = _optimizer(run, params + naming, cfg.lr, "unet")
    run.ema = Ema(params, cfg.ema_decay)
    if run.saved and run.saved.get("stage") == "unet" and run.saved.get("ema"):
        run.ema.load_state_dict(run.saved["ema"])
    keys = ("num_train_timesteps", "beta_start", "beta_end", "beta_schedule", "trained_betas", "prediction_type")
    run.noise = DDPMScheduler(**{k: run.scheduler[k] for k in keys if k in run.scheduler})
    run.noise.alphas_cumprod = run.noise.alphas_cumprod.to(run.device)
    _loop(run, "lora" if cfg.lora else "unet", _unet_step, stop, on_step, ckpt, share=0.97)
    run.stage = "done"
    _save(run, ckpt)


def _naming_on(run: _Run) -> bool:
    return run.head is not None and run.cfg.text_weight > 0  # never for a LoRA: it has no head


def _pick(run: _Run, b: int) -> tuple[torch.Tensor, torch.Tensor]:
    """`b` images (colour families weighted) and a caption of each: `main_caption` of the time the main one,
    otherwise any variant. Returns (image indices, token ids)."""
    cfg, g, dev = run.cfg, run.gen, run.device
    if run.weights is None:
        idx = torch.randint(len(run.pixels), (b,), generator=g, device=dev)
    else:
        idx = torch.multinomial(run.weights, b, replacement=True, generator=g)
    any_variant = (torch.rand(b, generator=g, device=dev) * run.var_count[idx]).long()
    main = torch.rand(b, generator=g, device=dev) < cfg.main_caption
    return idx, run.tokens[run.var_start[idx] + torch.where(main, 0, any_variant)]


def _unet_step(run: _Run) -> torch.Tensor:
    cfg, g, dev = run.cfg, run.gen, run.device
    b = cfg.batch_size
    idx, tokens = _pick(run, b)
    drop = torch.rand(b, generator=g, device=dev) < cfg.caption_dropout  # empty captions, for guidance
    tokens = torch.where(drop[:, None], run.empty[None], tokens)  # (B, 77)
    eps = torch.randn(run.lat_mean[idx].shape, generator=g, device=dev)
    latents = (run.lat_mean[idx] + run.lat_std[idx] * eps) * run.scaling_factor  # (B, 4, h, w)
    noise = torch.randn(latents.shape, generator=g, device=dev)
    t = torch.randint(0, run.noise.config.num_train_timesteps, (b,), generator=g, device=dev)
    noisy = run.noise.add_noise(latents, noise, t)
    v_pred = run.scheduler.get("prediction_type", "epsilon") == "v_prediction"
    target = run.noise.get_velocity(latents, noise, t) if v_pred else noise
    with _autocast(run):
        encoded = run.te(tokens)
        pred = run.unet(noisy, t, encoder_hidden_states=encoded[0]).sample.float()
    snr = run.noise.alphas_cumprod[t] / (1 - run.noise.alphas_cumprod[t])
    weight = snr.clamp(max=5.0) / (snr + 1 if v_pred else snr)  # min-SNR-5, Hang et al. (2023)
    loss = (weight * (pred - target).pow(2).mean(dim=(1, 2, 3))).mean()
    naming = _naming_on(run)
    total = loss + cfg.text_weight * _naming_loss(run, encoded[1], idx, ~drop) if naming else loss
    run.opt.zero_grad(set_to_none=True)
    total.backward()
    params = _trainable(run)
    if naming:  # clipped apart, so the naming loss's larger gradients never shrink the UNet's steps
        torch.nn.utils.clip_grad_norm_(list(run.unet.parameters()), 1.0)
        torch.nn.utils.clip_grad_norm_([*run.te.parameters(), *run.head.parameters()], 1.0)
    else:
        torch.nn.utils.clip_grad_norm_(params, 1.0)
    run.opt.step()
    run.ema.update(params, run.step)
    return loss.detach()


# 4. Export ---------------------------------------------------------------------------------------


def write(run: _Run, folder: Path) -> Path:
    """Write the EMA weights as a diffusers folder (fp16 safetensors)."""
    import copy

    te, unet = copy.deepcopy(run.te), copy.deepcopy(run.unet)
    if run.ema is not None:
        run.ema.copy_to(_trainable_of(te, unet, run.cfg.train_text_encoder))
    if run.neutral is not None:
        seen = unseen.seen_mask(torch.cat([run.tokens, run.empty[None]]), te.config.vocab_size)
        unseen.neutralise(te.get_input_embeddings().weight, seen, run.neutral)
    readme = model_readme(run)
    return export.write_model(
        folder, te, unet, run.vae, run.scheduler, run.tokenizer_dir, readme, vocabulary=run.vocabulary
    )


def write_lora(run: _Run, path: Path, started: float) -> Path:
    """Write the EMA of the adapters as a kohya-format LoRA file with kohya's ss_* metadata."""
    import copy

    te, unet = copy.deepcopy(run.te), copy.deepcopy(run.unet)
    if run.ema is not None:
        run.ema.copy_to(loras.parameters(unet, te))
    size = 2 ** (len(run.vae.config.block_out_channels) - 1) * run.unet.config.sample_size
    meta = loras.metadata(run.cfg, base=run.cfg.init or "", family=run.family, size=size,
                          captions=run.captions or [], steps=run.total, started=started, loss=run.loss)  # fmt: skip
    return loras.save(path, loras.kohya_tensors(unet, te), meta)


def _trainable_of(te, unet, with_text: bool) -> list[torch.nn.Parameter]:
    return list(unet.parameters()) + (list(te.parameters()) if with_text else [])


def model_readme(run: _Run) -> str:
    """The model card written beside the weights: data, licences, training settings."""
    from sdplay.training.card import card, fine_tune_note

    if run.new_model:
        return card(run.cfg.to_dict(), run.vae_total, run.total, run.loss)
    base = run.tokenizer_dir.parent / "README.md" if run.tokenizer_dir else None
    text = base.read_text() if base and base.is_file() else f"# Fine-tuned from {run.cfg.init}\n"
    return text.rstrip() + "\n\n" + fine_tune_note(run.cfg.to_dict(), run.total, run.loss)
