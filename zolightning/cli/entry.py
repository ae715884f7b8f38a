"""The `zolightning` command's entry point: light subcommands answer without importing Lightning first.

`compare`, `export` and `optimizer` dispatch from here; everything else is the LightningCLI in `cli.py`.
"""

from __future__ import annotations

import sys

OVERVIEW = """usage: zolightning <command> [options]       (`zolightning <command> --help`: its options)

commands:
  fit        fine-tune with forward passes only:  zolightning fit --config sst2/mezo
  validate   score a model or checkpoint on a task's dev and eval splits (also: test, predict)
  meta       meta-train the variance networks:    zolightning meta fit --config meta/multitask
  compare    grids of fits with seeds, tables, plots: zolightning compare run|status|table GRID.yaml
  optimizer  inspect, import and re-target learned-optimizer files
  configs    the shipped configs: zolightning configs list; zolightning configs copy sst2/mezo my.yaml
  export     a fine-tuned checkpoint as a Hugging Face model directory
  generate   answer prompts with a checkpoint, an exported directory or a model (chat template applied)
"""


def main(args: list[str] | None = None) -> None:
    argv = sys.argv[1:] if args is None else args
    if argv[:1] in ([], ["-h"], ["--help"]):
        print(OVERVIEW, end="")
        raise SystemExit(0 if argv else 2)
    if argv[:1] == ["compare"]:
        from zolightning.compare.cli import main as compare_main

        raise SystemExit(compare_main(argv[1:]))
    if argv[:1] == ["optimizer"]:
        from zolightning.cli.optimizer import main as optimizer_main

        raise SystemExit(optimizer_main(argv[1:]))
    if argv[:1] == ["configs"]:
        from zolightning.resources import main as configs_main

        try:
            raise SystemExit(configs_main(argv[1:]))
        except (FileNotFoundError, FileExistsError) as error:
            print(f"error: {error}", file=sys.stderr)
            raise SystemExit(2) from None
    if argv[:1] == ["generate"]:
        from zolightning.cli.generate import main as generate_main

        raise SystemExit(generate_main(argv[1:]))
    if argv[:1] == ["export"]:
        from zolightning.cli.export import main as export_main

        raise SystemExit(export_main(argv[1:]))
    from zolightning.cli.main import main as cli_main

    cli_main(args)
