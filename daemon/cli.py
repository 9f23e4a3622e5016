"""`inferd` command line."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import inferd
from inferd.common.errors import ConfigError
from inferd.config.settings import load_daemon_config, parse_address, read_token


def _address_flag(value: str) -> str:
    """--http/--grpc: checked as the flag is parsed, so the error names the flag."""
    if value:
        try:
            parse_address(value)
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from None
    return value


def _parser() -> tuple[argparse.ArgumentParser, dict[str, argparse.ArgumentParser]]:
    """The top-level parser, and each command's own."""
    parser = argparse.ArgumentParser(prog="inferd", description="Model-serving daemon (KServe V2 protocol).")
    parser.add_argument("--version", action="version", version=f"inferd {inferd.__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="serve the models directory until SIGTERM/SIGINT")
    serve.add_argument("--config", metavar="FILE", help="daemon config (TOML)")
    serve.add_argument("--models", metavar="DIR", help="models directory [models.dir]")
    serve.add_argument("--http", metavar="HOST:PORT", type=_address_flag,
                       help='V2 REST listener; port 0 picks a free port; "" disables [server.http]')
    serve.add_argument("--grpc", metavar="HOST:PORT", type=_address_flag, help='V2 gRPC listener; "" disables [server.grpc]')
    serve.add_argument("--socket", metavar="PATH", help='Unix socket (msgpack protocol); "" disables [server.socket]')
    serve.add_argument("--http-socket", metavar="PATH", help="V2 REST on a Unix socket too [server.http_socket]")
    serve.add_argument("--log-format", choices=["auto", "json", "console", "journal"], help="[log.format]")
    serve.add_argument("--log-level", choices=["debug", "info", "warning", "error"], help="[log.level]")
    models = commands.add_parser("models", help="list the models of a running daemon, or load/unload one")
    models.add_argument("action", nargs="?", choices=["list", "load", "unload"], default="list")
    models.add_argument("name", nargs="?", help="the model to load or unload")
    models.add_argument("--socket", metavar="PATH", help="the daemon's Unix socket (default: as `serve` picks it)")
    models.add_argument("--url", metavar="URL", help="the daemon's HTTP address instead, e.g. http://127.0.0.1:8000")
    models.add_argument("--token-file", metavar="FILE", help="bearer token for --url")
    models.add_argument("--cafile", metavar="FILE", help="certificate(s) to trust for an https:// --url")
    return parser, {"serve": serve, "models": models}


def format_models(rows: list[dict]) -> str:
    """The repository index as a table, one line per model version (a PLATFORM column when a
    Triton model is listed), each of a model's notes on a line of its own below it."""
    platforms = any("platform" in r for r in rows)
    header = ("MODEL", "VERSION", "STATE") + ("PLATFORM",) * platforms + ("REASON",)
    lines = [header] + [(r["name"], r["version"] or "-", r["state"]) + (r.get("platform") or "-",) * platforms
                        + (r.get("reason", ""),) for r in rows]
    columns = len(header) - 1
    widths = [max(len(line[i]) for line in lines) for i in range(columns)]
    out = []
    for i, line in enumerate(lines):
        out.append(("  ".join(cell.ljust(w) for cell, w in zip(line[:columns], widths))
                    + ("  " + line[columns] if line[columns] else "")).rstrip())
        out.extend(f"    note: {note}" for note in (rows[i - 1].get("notes", []) if i else []))
    return "\n".join(out).rstrip()


def _models_command(args: argparse.Namespace) -> int:
    from inferd.client import Client, InferdClientError

    if args.action != "list" and not args.name:
        print(f"inferd models {args.action}: name the model", file=sys.stderr)
        return 2
    try:
        token = Path(args.token_file).read_text().strip() if args.token_file else None
        with Client(socket=args.socket, url=args.url, token=token, cafile=args.cafile, timeout=600) as client:
            if args.action == "list":
                print(format_models(client.models()))
            else:
                getattr(client, args.action)(args.name)
                print(f"{args.name}: {args.action}ed")
    except (InferdClientError, OSError, ValueError) as e:  # (ValueError: UnicodeDecodeError too)
        print(f"inferd models: {e}", file=sys.stderr)
        return 1
    return 0


def _overrides(args: argparse.Namespace) -> dict:
    flags = {
        ("models", "dir"): args.models,
        ("server", "http"): args.http,
        ("server", "grpc"): args.grpc,
        ("server", "socket"): args.socket,
        ("server", "http_socket"): args.http_socket,
        ("log", "format"): args.log_format,
        ("log", "level"): args.log_level,
    }
    out: dict[str, dict] = {}
    for (section, key), value in flags.items():
        if value is not None:
            out.setdefault(section, {})[key] = value
    return out


def _parse(argv: list[str] | None) -> argparse.Namespace:
    """Like parse_args, but arguments a command does not know are reported with that
    command's usage (argparse reports them with the top-level one)."""
    parser, commands = _parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        commands[args.command].error(f"unrecognized arguments: {' '.join(unknown)}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    if args.command == "models":
        return _models_command(args)
    try:
        config = load_daemon_config(args.config, overrides=_overrides(args))
        token = read_token(config.auth)
    except ConfigError as e:
        print(f"inferd: invalid configuration: {e}", file=sys.stderr)
        return 2
    # Imported here so that `inferd --version` and config errors stay instant.
    import uvloop

    from inferd.daemon.operations import logs
    from inferd.daemon.server import Daemon

    logs.configure(config.log.format, config.log.level)
    def reread_config():
        return load_daemon_config(args.config, overrides=_overrides(args))

    return uvloop.run(Daemon(config, token, reread_config).run())


if __name__ == "__main__":
    sys.exit(main())
