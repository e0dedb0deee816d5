"""Fail fast for the whole chain: every stage's own checks (common.preflight), run before the first long step.

    python scripts/preflight.py [--config config.yaml] [--stages curate,train,eval,gguf] [key=value ...]

`make all` runs this right after setup: a missing tool (Go for the export), an unwritable run folder, too
little disk for the export or too little memory for training are all reported at once, in seconds, instead
of at the stage that needs them. Exit 2 with one `error:` line per problem; 0 and one line when all is well.
"""

from __future__ import annotations

import sys
import time

from common.cli import config_from_args, parser
from common.errors import UserError, exits_cleanly

STAGES = ("curate", "train", "eval", "gguf")


PACKAGES = {"curate": "curate", "train": "train", "eval": "evaluate", "gguf": "export"}  # make target -> package


def stage_checks(stage: str):
    import importlib

    return importlib.import_module(PACKAGES[stage]).checks


@exits_cleanly
def main(argv=None) -> int:
    ap = parser("scripts/preflight.py", "Check what every stage of the chain needs before it starts.")
    ap.add_argument("--stages", default=",".join(STAGES), help=f"comma-separated, of {', '.join(STAGES)}")
    args = ap.parse_args(argv)
    stages = [s for s in args.stages.split(",") if s]
    unknown = [s for s in stages if s not in STAGES]
    if unknown:
        raise UserError(f"--stages: unknown stage(s) {unknown}; choose from {', '.join(STAGES)}")
    t0 = time.time()
    cfg = config_from_args(args)
    problems: list[str] = []
    for stage in stages:
        problems += [p for p in stage_checks(stage)(cfg) if p not in problems]
    if problems:
        raise UserError(*problems, f"preflight: {len(problems)} problem(s) above; nothing was run")
    print(f"preflight: {', '.join(stages)} have what they need ({time.time() - t0:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
