"""`sdplay devices`: the accelerators of this machine, as a `clinfo -l`-style tree or JSON."""

from __future__ import annotations

import json


def register(sub) -> None:
    p = sub.add_parser("devices", help="list this machine's accelerators")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=run)


def run(args) -> int:
    from sdplay.devices import discover_devices, format_tree

    devices = discover_devices()
    live = _live(devices)
    if args.json:
        print(json.dumps([d.to_dict() | {"live": live.get(d.id)} for d in devices], indent=2))
    else:
        print(format_tree(devices, live))
    return 0


def _live(devices) -> dict[str, dict]:
    """Live figures (free memory, utilisation) where telemetry can read them."""
    try:
        from sdplay.telemetry import live_figures
    except ImportError:
        return {}
    out = {}
    for dev in devices:
        try:
            out[dev.id] = live_figures(dev.id)
        except Exception as exc:  # a vendor tool missing must not hide the static listing
            out[dev.id] = {"unavailable": str(exc)}
    return out
