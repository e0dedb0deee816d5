"""python -m export [--config config.yaml] [key=value ...]"""

import sys

from common.cli import config_from_args, parser
from common.errors import exits_cleanly


@exits_cleanly
def main(argv=None) -> int:
    args = parser("python -m export", "Merged model -> GGUF (f16, q8_0, quantized) -> verified Ollama Modelfile in runs/<name>/export/.").parse_args(argv)
    cfg = config_from_args(args)
    from export.run import main as run

    run(cfg)
    return 0


if __name__ == "__main__":
    sys.exit(main())
