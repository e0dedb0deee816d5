"""`make suspects`: the train rows the model disputes most, from runs/<name>/train/data_map.jsonl, with file:line
and the worst position in words (for people without a browser; `make review` has them as a queue).

    python -m train.suspects --config config.yaml [--top 20] [key=value ...]
"""

from __future__ import annotations

import sys

from common.cli import config_from_args, parser
from common.data_map import FILE, in_words, ranked, where
from common.errors import exits_cleanly


@exits_cleanly
def main(argv: list[str] | None = None) -> int:
    ap = parser("python -m train.suspects", __doc__.splitlines()[0])
    ap.add_argument("--top", type=int, default=20, help="how many rows (default 20)")
    args = ap.parse_args(argv)
    cfg = config_from_args(args)
    path = cfg.run_dir / "train" / FILE
    lines = ranked(path)
    print(f"{min(args.top, len(lines))} most suspect of {len(lines)} train rows ({path}):")
    for i, ln in enumerate(lines[:args.top], 1):
        print(f"{i:3d}. {where(ln)}  suspicion {ln['suspicion']:.3f}  {ln['region']:9s}  {in_words(ln)}")
    print("reject, edit or keep them in `make review` (the suspects queue); the next `make curate` applies it")
    return 0


if __name__ == "__main__":
    sys.exit(main())
