"""Helpers shared by the commands: quiet libraries, sizes, engine options."""

from __future__ import annotations

import argparse
import os
import time

from sdplay.errors import InvalidRequest


def quiet_libraries() -> None:
    """Keep library chatter (progress bars, deprecation notes) off the user's terminal."""
    for var in ("TRANSFORMERS_VERBOSITY", "DIFFUSERS_VERBOSITY"):
        os.environ.setdefault(var, "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")


def openmp_waiting(command: str | None) -> None:
    """How PyTorch's idle OpenMP threads wait between two operations (read when torch loads; yours wins if set).

    By default they sleep (OMP_WAIT_POLICY=PASSIVE): on a busy CPU spinning threads starve each other (20 steps of
    the embedded model took 90-190 s instead of 14 s on 2 cores at a load average of about 20; with GNU OpenMP's
    default spin, 4-13 s instead of 0.5-0.9 s at a load of 3). But waking a sleeping thread takes longer than a
    small model's operation: on free cores the embedded model's 20 steps took 0.8 s asleep and 0.4 s with a short
    spin. So a one-shot `generate` that finds no other task running spins briefly (GOMP_SPINCOUNT=1000: at most
    about twice as slow as asleep if the machine gets busy meanwhile); everything else sleeps.
    """
    if "OMP_WAIT_POLICY" in os.environ or "GOMP_SPINCOUNT" in os.environ:
        return
    if command == "generate" and _cpus_free():
        os.environ["GOMP_SPINCOUNT"] = "1000"
    else:
        os.environ["OMP_WAIT_POLICY"] = "PASSIVE"


def _cpus_free(samples: int = 5) -> bool:
    """Whether no other task runs now: Linux's count of running tasks (this one included), a few times over ~10 ms."""
    try:
        for _ in range(samples):
            with open("/proc/loadavg") as f:
                if int(f.read().split()[3].split("/")[0]) > 1:
                    return False
            time.sleep(0.002)
    except (OSError, ValueError, IndexError):  # not Linux: the load average, if there is one
        try:
            return os.getloadavg()[0] < 0.25 * (os.cpu_count() or 1)
        except (AttributeError, OSError):
            return False
    return True


def parse_size(text: str | None) -> tuple[int | None, int | None]:
    """'512x768' -> (512, 768); a single number means a square."""
    if not text:
        return None, None
    parts = text.lower().replace("×", "x").split("x")
    if len(parts) in (1, 2) and all(p.strip().isdigit() for p in parts):
        return int(parts[0]), int(parts[-1])
    raise InvalidRequest(f"Size {text!r} is not WIDTHxHEIGHT.", field="size", hint="Write it like 512x512.")


def add_load_options(parser: argparse.ArgumentParser) -> None:
    """Flags that decide how a model is loaded and optimised."""
    g = parser.add_argument_group("loading and memory")
    g.add_argument("--random-weights", action="store_true", help="build the architecture with random weights")
    g.add_argument("--allow-pickle", action="store_true",
                   help="allow .ckpt/.pt checkpoints, embeddings and VAEs (read weights-only)")  # fmt: skip
    g.add_argument("--no-safety-checker", action="store_true", help="skip the model's safety checker")
    g.add_argument("--attention-slicing", action="store_true", help="less memory, a little slower")
    g.add_argument("--vae-slicing", action="store_true", help="decode one image at a time")
    g.add_argument("--vae-tiling", action="store_true", help="decode large images in tiles")
    g.add_argument("--cpu-offload", action="store_true", help="keep idle components in host memory")
    g.add_argument("--no-fast", action="store_true", help="turn the compiled fast path off")
    g.add_argument("--lora-dir", default=None, metavar="DIR", help="LoRA .safetensors folder (default: Lora/ "
                   "under sdplay's model folder, $SDPLAY_MODELS or ~/.local/share/sdplay/models)")  # fmt: skip
    g.add_argument(
        "--embeddings-dir",
        default=None,
        metavar="DIR",
        help="textual-inversion folder: a file's name in the prompt uses it (default: embeddings/ there)",
    )
    g.add_argument("--vae-dir", default=None, metavar="DIR", help="VAE files and folders (default: VAE/ there)")
    g.add_argument(
        "--ckpt-dir",
        default=None,
        metavar="DIR",
        help="checkpoints and diffusers folders usable by name (default: Stable-diffusion/ there)",
    )
    g.add_argument(
        "--vae",
        default=None,
        metavar="FILE|NAME",
        help="decode with this VAE: a .safetensors file, a diffusers VAE folder or a --vae-dir name",
    )
    g.add_argument(
        "--fast-options",
        default="",
        metavar="OPTS",
        help="fast-path options such as deepcache=3; turns the fast path on (docs/benchmarks.md)",
    )


def load_options(args: argparse.Namespace):
    """The load options of the flags; fast-path options default to $SDPLAY_FAST."""
    from sdplay.loading import LoadOptions

    return LoadOptions(
        random_weights=args.random_weights,
        allow_pickle=args.allow_pickle or os.environ.get("SDPLAY_ALLOW_PICKLE", "").lower() in ("1", "true", "yes"),
        safety_checker=not args.no_safety_checker,
        attention_slicing=args.attention_slicing,
        vae_slicing=args.vae_slicing,
        vae_tiling=args.vae_tiling,
        cpu_offload=args.cpu_offload,
        fast=False if args.no_fast else (True if args.fast_options else None),
        fast_options=args.fast_options or os.environ.get("SDPLAY_FAST", ""),
        lora_dir=args.lora_dir,
        embeddings_dir=args.embeddings_dir,
        vae_dir=args.vae_dir,
        vae=args.vae,
        ckpt_dir=args.ckpt_dir,
    )


def human_bytes(n: int | None) -> str:
    if n is None:
        return "n/a"
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.0f} MiB"
