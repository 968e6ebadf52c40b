"""`sdplay train`: fetch the emoji data, train the small default model, or fine-tune a model on your images."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

EXAMPLES = """examples:
  sdplay train --prepare                               fetch the emoji images (npm) and build the data file
  sdplay train --out runs/emoji                        train a new emoji model (GPU recommended)
  sdplay train --out runs/emoji --resume               carry on after Ctrl-C
  sdplay train --init sdplay-emoji --images my_pics/ --out runs/mine --steps 500
                                                       fine-tune on images with a .txt caption beside each;
                                                       then: sdplay generate --model runs/mine/model "..."
  sdplay train --lora --init sdplay-emoji --images my_pics/ --out runs/zorbo
                                                       train a LoRA (minutes on a CPU): runs/zorbo/zorbo.safetensors;
                                                       then: sdplay generate --lora-dir runs/zorbo "zorbo <lora:zorbo>"
"""


def register(sub) -> None:
    p = sub.add_parser(
        "train",
        help="train the emoji model, or fine-tune a model on captioned images",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_arguments(p)
    p.set_defaults(func=run)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--prepare", action="store_true", help="fetch and build the emoji data file, then stop")
    p.add_argument("--out", type=Path, default=Path("runs/emoji"), help="run folder: checkpoint and model/")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint")
    src = p.add_argument_group("data and starting point")
    src.add_argument("--data", type=Path, default=None, help="data .npz (default: the cached emoji set)")
    src.add_argument("--images", type=Path, default=None, help="folder of images with a .txt caption beside each")
    src.add_argument("--init", default=None, help="fine-tune this model (built-in name or diffusers folder)")
    hp = p.add_argument_group("schedule (unset: the emoji model's defaults, or fine-tuning defaults with --init)")
    hp.add_argument("--steps", type=int, default=None, help="UNet/text-encoder steps")
    hp.add_argument("--vae-steps", type=int, default=None, help="VAE steps (new models only)")
    hp.add_argument("--batch-size", type=int, default=None)
    hp.add_argument("--lr", type=float, default=None, help="peak learning rate")
    hp.add_argument("--warmup", type=int, default=None, help="warm-up steps")
    hp.add_argument("--seed", type=int, default=None)
    hp.add_argument("--freeze-text-encoder", action="store_true", help="train the UNet only")
    hp.add_argument("--augment", type=int, default=None, help="phrasings per image (default: 48 new, 0 fine-tuning)")
    hp.add_argument(
        "--colour-weight", type=float, default=None, help="draw emoji that differ only by colour this much more (3)"
    )
    hp.add_argument("--main-caption", type=float, default=None, help="share of samples with the main caption (0.3)")
    hp.add_argument(
        "--text-steps",
        type=int,
        default=None,
        help="first train the text encoder alone for this many steps to name each caption's emoji (0)",
    )
    hp.add_argument(
        "--text-weight",
        type=float,
        default=None,
        help="keep that naming loss at this weight while the UNet trains (0: off)",
    )
    hp.add_argument("--token-embedding", type=Path, default=None, help="start the token embedding from this .npy")
    hp.add_argument("--freeze-token-embedding", action="store_true", help="keep that token embedding fixed")
    hp.add_argument(
        "--unseen-tokens",
        choices=["neutral", "keep"],
        default=None,
        help="new models: tokens of no caption read as the random extra words it learned to ignore (neutral, "
        "the default), or keep their random start",
    )
    hp.add_argument("--max-minutes", type=float, default=None, help="shorten the schedule to end in this time")
    hp.add_argument("--checkpoint-every", type=int, default=None, help="steps between checkpoints")
    hp.add_argument("--tiny", action="store_true", help="a toy-sized new model (to try the pipeline quickly)")
    lo = p.add_argument_group("LoRA (--lora: train adapters on the frozen --init model, export a kohya .safetensors)")
    lo.add_argument("--lora", action="store_true", help="train a LoRA instead of fine-tuning the whole model")
    lo.add_argument("--rank", type=int, default=None, help="LoRA rank, kohya's network_dim (default 4)")
    lo.add_argument("--alpha", type=float, default=None, help="LoRA alpha, kohya's network_alpha (default: the rank)")
    lo.add_argument("--name", default=None, help="the LoRA's name and file name (default: the --out folder's name)")
    lo.add_argument("--text-encoder", action=argparse.BooleanOptionalAction, default=None,
                    help="also put adapters on the text encoder (default: yes)")  # fmt: skip
    p.add_argument("--device", default=None, help="auto (default), cpu, cuda, cuda:1, mps")
    p.add_argument("--eval", type=int, default=0, metavar="N", help="afterwards, evaluate on N emoji prompts")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


FINE_TUNE_DEFAULTS = {"steps": 1000, "lr": 1e-4, "warmup": 100, "batch_size": 16, "checkpoint_every": 250}
LORA_DEFAULTS = {
    "steps": 400,
    "lr": 3e-3,
    "warmup": 20,
    "batch_size": 4,
    "checkpoint_every": 100,
    "caption_dropout": 0.0,  # the trigger words carry the LoRA; empty captions would spread it to every prompt
}


def config_from_args(args: argparse.Namespace):
    """The TrainConfig these flags describe (on --resume, the checkpoint's config with the flags on top)."""
    from sdplay.training.checkpoint import CHECKPOINT_NAME, load_checkpoint
    from sdplay.training.loop import TrainConfig
    from sdplay.training.models import TINY

    names = ("data", "images", "init", "steps", "vae_steps", "batch_size", "lr", "warmup", "seed", "device")
    names += ("token_embedding", "augment", "rank", "alpha", "colour_weight", "main_caption")
    names += ("text_steps", "text_weight", "unseen_tokens")
    given = {k: getattr(args, k) for k in (*names, "max_minutes", "checkpoint_every") if getattr(args, k) is not None}
    if args.freeze_text_encoder or args.text_encoder is False:
        given["train_text_encoder"] = False
    if args.name is not None:
        given["lora_name"] = args.name
    if args.freeze_token_embedding:
        given["freeze_token_embedding"] = True
    given.update(out=args.out, progress=not args.no_progress)
    if args.resume:
        saved = load_checkpoint(args.out / CHECKPOINT_NAME)["config"]
        return TrainConfig.from_dict({**saved, **{k: str(v) if isinstance(v, Path) else v for k, v in given.items()}})
    if args.tiny:
        given["arch"] = TINY
    if args.lora:
        _check_lora_flags(args)
        given = {**LORA_DEFAULTS, "init": "sdplay-emoji", **given, "lora": True}
    elif args.init:
        given = {**FINE_TUNE_DEFAULTS, **given}
    return TrainConfig(**given)


def _check_lora_flags(args: argparse.Namespace) -> None:
    """Say which flags a LoRA run cannot use, rather than ignoring them."""
    from sdplay.errors import InvalidRequest

    unused = [flag for flag, value in (("--tiny", args.tiny), ("--vae-steps", args.vae_steps),
                                       ("--token-embedding", args.token_embedding)) if value]  # fmt: skip
    if unused:
        raise InvalidRequest(
            f"{', '.join(unused)} cannot be used with --lora (a LoRA trains adapters on an existing model).",
            hint="Leave them out, or drop --lora to train a new model.",
        )
    if args.images is None:
        raise InvalidRequest(
            "sdplay train --lora needs your images.",
            hint="Pass --images DIR: images, each with a caption file of the same name (cat.png + cat.txt).",
        )


def run(args: argparse.Namespace) -> int:
    from sdplay.cli.common import quiet_libraries

    quiet_libraries()
    if args.prepare:
        from sdplay.training.data import load_set, prepare

        path = prepare(args.data)
        data = load_set(path)
        print(f"{path}: {len(data)} captioned images, {data.images.shape[1]}x{data.images.shape[2]}")
        return 0
    from sdplay.accel.runtime import configure_torch_for_training
    from sdplay.training.loop import train

    cfg = config_from_args(args)
    configure_torch_for_training()  # process-wide, once, by the command that owns the process
    result = train(cfg, resume=args.resume)
    if result.lora_file is not None:
        _report_lora(cfg, result)
        return 0
    sizes = ", ".join(f"{k} {v / 1e6:.2f}M" for k, v in result.parameters.items())
    print(f"model: {result.model_dir} ({sizes} parameters)")
    print(
        f"{result.vae_steps} VAE + {result.steps} UNet steps in {result.seconds / 60:.1f} min, loss {result.loss:.4f}"
    )
    print(f'try it: sdplay generate --model {result.model_dir} "red heart"')
    if args.eval:
        from sdplay.training.evaluate import evaluate
        from sdplay.training.loop import pick_device

        device = str(pick_device(cfg.device))
        report, _, _ = evaluate(result.model_dir, n=args.eval, device=device, backend="diffusers")
        print(report.summary())
    return 0


def _report_lora(cfg, result) -> None:
    name = result.lora_file.stem
    print(f"LoRA: {result.lora_file} ({result.parameters['lora'] / 1e3:.1f}k parameters, rank {cfg.rank}, "
          f"for {cfg.init})")  # fmt: skip
    print(f"{result.steps} steps in {result.seconds / 60:.1f} min, loss {result.loss:.4f}")
    trigger = (cfg.images and _first_caption(cfg.images)) or "your caption"
    folder = result.lora_file.parent
    print(f'try it: sdplay generate --model {cfg.init} --lora-dir {folder} "{trigger} <lora:{name}:1>"')
    print(f"or copy it into your LoRA folder ({_lora_home()}) for `sdplay serve` and the A1111 API.")


def _first_caption(folder) -> str | None:
    captions = sorted(Path(folder).glob("*.txt"))
    return " ".join(captions[0].read_text(encoding="utf-8", errors="replace").split()) if captions else None


def _lora_home() -> Path:
    from sdplay.loras import default_folder

    return default_folder("Lora")


def main(argv: list[str] | None = None) -> int:
    """`python -m sdplay.cli.train ...`: this command alone, without importing the other subcommands."""
    from sdplay.cli.main import run_command

    parser = argparse.ArgumentParser(
        prog="sdplay train", epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_arguments(parser)
    return run_command(run, parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
