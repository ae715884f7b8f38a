"""The `zolightning` command's entry point: light subcommands answer without importing Lightning first.

`compare`, `export` and `optimizer` dispatch from here; everything else is the LightningCLI in `cli.py`.
"""

from __future__ import annotations

import sys


def main(args: list[str] | None = None) -> None:
    argv = sys.argv[1:] if args is None else args
    if argv[:1] == ["compare"]:
        from zolightning.compare.cli import main as compare_main

        raise SystemExit(compare_main(argv[1:]))
    if argv[:1] == ["optimizer"]:
        from zolightning.optimizer_cli import main as optimizer_main

        raise SystemExit(optimizer_main(argv[1:]))
    if argv[:1] == ["export"]:
        from zolightning.export_cli import main as export_main

        raise SystemExit(export_main(argv[1:]))
    from zolightning.cli import main as cli_main

    cli_main(args)
