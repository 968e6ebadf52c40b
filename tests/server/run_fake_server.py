"""Run the server over the fake engine in its own process (restart tests, schemathesis from the command line).

python tests/server/run_fake_server.py --port 7861 --dir /tmp/sdplay-fake [--step-delay 0.01]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))


def main() -> None:
    import uvicorn
    from fake_engine import FakeEngine

    from sdplay.server.app import create_app
    from sdplay.server.settings import Settings

    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--dir", type=Path, required=True)
    parser.add_argument("--step-delay", type=float, default=0.002)
    args = parser.parse_args()
    settings = Settings(port=args.port, output_dir=args.dir / "out", gallery_db=args.dir / "gallery.sqlite3")
    app = create_app(settings, FakeEngine(step_delay=args.step_delay))
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning", timeout_graceful_shutdown=2)


if __name__ == "__main__":
    main()
