"""Measure what a LoRA trained on the "zorbo" images learned (docs/emoji-model.md, "A LoRA on your own images").

    python scripts/lora_effect.py --make-images zorbo/                       # the six captioned images
    sdplay train --lora --init sdplay-emoji --images zorbo/ --out runs/zorbo
    python scripts/lora_effect.py runs/zorbo/zorbo.safetensors --images zorbo/

Distance: mean squared pixel difference (32x32, 0-1) to the nearest training image; blue: share of disc-blue pixels.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from zorbo import CAPTION, blue_share, distance, make_folder


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("lora", nargs="?", type=Path, help="the LoRA .safetensors")
    parser.add_argument("--images", type=Path, required=True, help="the training images")
    parser.add_argument("--make-images", action="store_true", help="write the zorbo images to --images and stop")
    parser.add_argument("--steps", type=int, nargs="+", default=[20, 10])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("-n", type=int, default=4, help="images per prompt")
    args = parser.parse_args()
    if args.make_images:
        print(make_folder(args.images))
        return 0
    from PIL import Image

    from sdplay.engine import Engine
    from sdplay.types import GenerationRequest

    name = args.lora.stem
    engine = Engine(device="cpu", lora_dir=str(args.lora.parent))

    def draw(prompt: str, steps: int = 20):
        return engine.generate(GenerationRequest(prompt=prompt, seed=args.seed, n_images=args.n, steps=steps)).images

    training = [Image.open(p) for p in sorted(args.images.glob("*.png"))]
    print(f"training images: blue {blue_share(training):.3f}")
    for steps in args.steps:
        for tag in ("", f" <lora:{name}:0.5>", f" <lora:{name}:1>"):
            images = draw(CAPTION + tag, steps)
            print(f"{steps:3d} steps  {CAPTION + tag:28s} distance {distance(images, args.images):.3f}  "
                  f"blue {blue_share(images):.3f}")  # fmt: skip
    plain, with_lora = draw("red heart"), draw(f"red heart <lora:{name}:1>")
    pixels = lambda images: np.stack([np.asarray(i, dtype=np.float64) for i in images])  # noqa: E731
    change = np.abs(pixels(plain) - pixels(with_lora))
    print(f"red heart with the LoRA: mean change {change.mean():.1f} levels, blue {blue_share(plain):.3f} -> "
          f"{blue_share(with_lora):.3f}")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
