"""python -m train [--config config.yaml] [--fresh] [key=value ...]"""

import sys

from common.cli import config_from_args, parser
from common.errors import exits_cleanly


@exits_cleanly
def main(argv=None) -> int:
    ap = parser("python -m train", "LoRA fine-tuning on runs/<name>/curate/train.jsonl into runs/<name>/train/.")
    ap.add_argument("--fresh", action="store_true", help="delete existing checkpoints and start over")
    args = ap.parse_args(argv)
    cfg = config_from_args(args)
    from train.recipe import main as run

    run(cfg, fresh=args.fresh)
    return 0


if __name__ == "__main__":
    sys.exit(main())
