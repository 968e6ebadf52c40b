"""`sdplay models`: the catalog, which models are here, and the sampler names."""

from __future__ import annotations

import json


def register(sub) -> None:
    p = sub.add_parser("models", help="list the model catalog and samplers")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=run)


def run(args) -> int:
    from sdplay.engine import Engine

    engine = Engine()
    models = engine.models()
    if args.json:
        print(json.dumps({"models": [vars(m) for m in models], "samplers": engine.samplers()}, indent=2))
        return 0
    for m in models:
        mark = "available" if m.available else "not downloaded"
        print(f"{m.name:<16} {m.family:<5} {m.native_size}x{m.native_size:<5} {mark:<15} {m.description}")
        print(f"{'':<16} aliases: {', '.join(m.aliases)}; defaults: {m.default_sampler}, {m.default_steps} steps, "
              f"CFG {m.default_guidance:g}")  # fmt: skip
        if not m.available:
            print(f"{'':<16} get it: {m.how_to_get}")
    print("\nsamplers: " + ", ".join(engine.samplers()))
    print("Any hub id, diffusers folder or .safetensors file also works as --model.")
    return 0
