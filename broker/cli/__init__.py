"""The command line (contract section 6). Thin: parse, call the library, print.

Every command takes `--json` (before or after its name) and then prints one
JSON object on stdout instead of prose. Exit codes: 0 done; 2 the request
cannot be done as asked (unknown account or id, duplicate email, device
limit, bad scope or value), with the reason on stderr (with `--json`,
`{"error": ...}` on stdout); 1 an operational failure (database
unreachable, the broker answered `send` with an error).

Secrets (API keys, device tokens) are printed once, when made, and never
logged. Database commands open one asyncpg connection to the same database
`serve` uses, the embedded one included, so they work while it runs.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

import msgspec

from broker.cli.commands import run_db
from broker.cli.common import CliError, Output
from broker.cli.parser import build_parser
from broker.settings import Settings

_encoder = msgspec.json.Encoder()


def _print(output: Output, as_json: bool) -> None:
    if as_json:
        data = output.data
        sys.stdout.write((data.decode() if isinstance(data, bytes) else
                          _encoder.encode(data).decode()) + "\n")
    elif output.text:
        print(output.text, file=sys.stdout if output.exit_code == 0 else sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    settings = Settings.from_env()
    args = build_parser(settings).parse_args(argv)
    try:
        if args.db:
            output = run_db(args.run, args, settings)
        else:
            output = args.run(args, settings)
    except CliError as err:
        if args.json:
            print(_encoder.encode({"error": str(err)}).decode())
        else:
            where = " ".join(filter(None, (args.command, getattr(args, "action", None))))
            print(f"smsdora {where}: {err}", file=sys.stderr)
        return err.exit_code
    if args.command not in ("serve", "device-sim"):
        _print(output, args.json)
    return output.exit_code


__all__ = ["CliError", "build_parser", "main"]
