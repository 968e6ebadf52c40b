"""`sdplay info IMAGE`: read back the generation parameters stored in a PNG."""

from __future__ import annotations

import json
from pathlib import Path

from sdplay.errors import InvalidRequest


def register(sub) -> None:
    p = sub.add_parser("info", help="show the generation parameters stored in an image")
    p.add_argument("image", nargs="+")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=run)


def run(args) -> int:
    from sdplay.images import read_png_info

    for name in args.image:
        if not Path(name).is_file():
            raise InvalidRequest(f"No file {name}.", field="image")
        info = read_png_info(Path(name))
        if args.json:
            print(json.dumps({"file": name, **info}, indent=2, default=str))
            continue
        print(f"== {name} ({info['size'][0]}x{info['size'][1]})")
        print(info["parameters"] or "(no A1111 parameters)")
        if info["sdplay"]:
            rec = info["sdplay"]
            print(
                f"sdplay: model {rec.get('model')}, device {rec.get('device', {}).get('id')}, dtype {rec.get('dtype')}"
            )
            print("optimisation: " + json.dumps(rec.get("optimisation", {})))
    return 0
