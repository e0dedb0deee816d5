"""The shared command line of every stage: `python -m <stage> [--config PATH] [key=value ...]`."""

from __future__ import annotations

import argparse

from common.config import Config, load_config


def parser(prog: str, description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description=description)
    p.add_argument("--config", default=None, help="config file (default: config.yaml at the repo root)")
    p.add_argument(
        "overrides", nargs="*", metavar="key=value",
        help="config overrides, e.g. train.max_steps=20 run.name=try2 (values are YAML)",
    )
    return p


def config_from_args(args: argparse.Namespace) -> Config:
    return load_config(args.config, args.overrides)


def run_stage(stage: str, description: str, run, argv: list[str] | None = None, flags: dict[str, str] | None = None) -> int:
    """`python -m <stage>`: parse the shared command line (plus boolean `flags`: --name -> help), then
    `run(cfg, **flags)` (the stage's own `<stage>.run`). A UserError prints its lines and exits 2."""
    from common.errors import exits_cleanly

    @exits_cleanly
    def main() -> int:
        ap = parser(f"python -m {stage}", description)
        for flag, help_text in (flags or {}).items():
            ap.add_argument(flag, action="store_true", help=help_text)
        args = ap.parse_args(argv)
        cfg = config_from_args(args)
        kwargs = {f.lstrip("-").replace("-", "_"): getattr(args, f.lstrip("-").replace("-", "_")) for f in flags or {}}
        run(cfg, **kwargs)
        return 0

    return main()


def main(argv: list[str] | None = None) -> int:
    """`python -m common.cli --get review.port [--config F] [key=value ...]`: one resolved value (for the Makefile)."""
    ap = parser("python -m common.cli", "Print one resolved config value.")
    ap.add_argument("--get", required=True, metavar="section.key")
    args = ap.parse_args(argv)
    value = config_from_args(args).to_dict()
    for part in args.get.split("."):
        value = value[part]
    print(value)
    return 0


if __name__ == "__main__":
    from common.errors import exits_cleanly

    raise SystemExit(exits_cleanly(main)())
