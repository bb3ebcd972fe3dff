"""`python -m rt1.serve`: the command line of the policy server (`rt1.serve.server.PolicyServer`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from rt1.errors import one_line, run_cli
from rt1.serve.protocol import DEFAULT_MAX_MESSAGE_BYTES, DEFAULT_PORT, ServeError
from rt1.serve.server import DEFAULT_MAX_CONNECTIONS, TOKEN_ENV, PolicyServer


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m rt1.serve",
        description="Serve a trained RT-1 policy over WebSocket (msgpack binary frames): one episode session "
        "per connection, RLDS observation in, RLDS action out.",
        epilog="What is protected: it listens on 127.0.0.1 only unless --host says otherwise; handshakes that "
        "carry a browser Origin are refused unless --allow-origin lists it; with --token (or "
        f"${TOKEN_ENV}) a client without the token is refused (HTTP 401); at most --max-connections at "
        "once; info names the model, not its path. Not protected: the traffic is not encrypted, and "
        "without a token any program that can reach the port can drive the robot.",
    )
    _model_options(parser)
    _access_options(parser)
    return parser


def _model_options(parser: argparse.ArgumentParser) -> None:
    """The model and how it runs."""
    parser.add_argument(
        "--model",
        type=Path,
        required=True,
        help="checkpoint-{epoch}.pt or a model directory from python -m rt1.export",
    )
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:N] (default cpu)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        help="inference threads (default 1: steps of all sessions run one at a time, in order)",
    )
    parser.add_argument(
        "--jpeg-quality",
        type=int,
        default=None,
        help="stage 2's --jpeg-quality of the training data (default: the exported config's, else 90)",
    )
    parser.add_argument(
        "--embedding-source",
        default=None,
        choices=("universal-sentence-encoder", "mini-fractal"),
        help="instruction embeddings of the training data (default: the exported config's, else "
        "universal-sentence-encoder); mini-fractal lets clients send instruction text",
    )
    parser.add_argument(
        "--max-message-bytes",
        type=int,
        default=DEFAULT_MAX_MESSAGE_BYTES,
        help=f"larger requests get an error reply (default {DEFAULT_MAX_MESSAGE_BYTES})",
    )


def _access_options(parser: argparse.ArgumentParser) -> None:
    """Where it listens and who may connect (README: "What the server protects")."""
    parser.add_argument(
        "--host",
        default="127.0.0.1",
        help="interface to listen on (default 127.0.0.1: this machine only). Another address exposes the "
        "robot to every machine that can reach it: the protocol has no encryption, so use --token and a "
        "trusted network (or an SSH tunnel)",
    )
    parser.add_argument(
        "--port", type=int, default=DEFAULT_PORT, help=f"TCP port (default {DEFAULT_PORT}; 0: any free)"
    )
    parser.add_argument(
        "--allow-origin",
        action="append",
        default=[],
        metavar="ORIGIN",
        help="also accept WebSocket handshakes from this browser Origin (repeatable; '*': any). By default "
        "a handshake with an Origin header (every web page's) is refused, so a page open in your browser "
        "cannot drive the robot",
    )
    parser.add_argument(
        "--token",
        default=None,
        help=f"require this shared token from every client (Authorization: Bearer TOKEN; PolicyClient and "
        f"eval_closed_loop.py send ${TOKEN_ENV}). Default: ${TOKEN_ENV} if set, else no token: anyone who "
        "can connect can drive the robot. The environment variable keeps it out of the process list",
    )
    parser.add_argument(
        "--max-connections",
        type=int,
        default=DEFAULT_MAX_CONNECTIONS,
        help=f"concurrent connections; more are closed at once (code 1013; default {DEFAULT_MAX_CONNECTIONS})",
    )


def serve(args: argparse.Namespace) -> int:
    """Run the server of parsed arguments until SIGTERM/SIGINT; exit status 0."""
    import asyncio
    import logging
    import os

    import torch

    if not 0 <= args.port <= 65535 or args.threads < 1:
        raise ServeError(f"--port must be 0..65535 and --threads >= 1, got {args.port}, {args.threads}")
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    torch.set_num_threads(args.threads)
    server = PolicyServer(
        args.model,
        args.device,
        args.jpeg_quality,
        args.embedding_source,
        args.workers,
        args.max_message_bytes,
        args.threads,
        tuple(args.allow_origin),
        args.token if args.token is not None else os.environ.get(TOKEN_ENV),
        args.max_connections,
    )

    def ready(port: int) -> None:
        print(f"serving {args.model} on ws://{args.host}:{port} (SIGTERM or Ctrl-C stops)", flush=True)

    try:
        signum = asyncio.run(server.serve(args.host, args.port, ready))
    except OSError as e:
        raise ServeError(f"cannot listen on {args.host}:{args.port} ({one_line(e)})") from None
    print(f"stopped on signal {signum}", flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    return run_cli(lambda _: serve(args))
