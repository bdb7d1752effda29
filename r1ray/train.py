"""`python -m r1ray.train --config F [key=value ...]`: the same as `r1ray train`, for `ray job submit`.

A thin entry point: the training loop lives in the controller layer, imported only when run.
"""

import sys


def main() -> int:
    from r1ray.controller.cli import main as cli_main

    return cli_main(["train", *sys.argv[1:]])


if __name__ == "__main__":
    sys.exit(main())
