"""`python -m chaos.toxiproxy --host 127.0.0.1 --port 8474`: serve the Toxiproxy API until interrupted."""

from __future__ import annotations

import argparse

from aiohttp import web

from chaos.toxiproxy.api import create_app


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m chaos.toxiproxy", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8474)
    arguments = parser.parse_args()
    web.run_app(create_app(), host=arguments.host, port=arguments.port, print=None)


if __name__ == "__main__":
    main()
