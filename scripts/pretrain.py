"""Pretrain the Celler encoder on token stores (masked-value prediction).

    python scripts/pretrain.py --stores results/tokens/kang results/tokens/pbmc3k --out results/models/pbmc \\
        --preset tiny --set max_steps=1500 --set lr=1e-3
    torchrun --standalone --nproc_per_node=4 scripts/pretrain.py --stores ... --out ... --preset scgpt-base

``--set key=value`` (repeatable) sets any PretrainConfig field or ModelConfig field (see celler.train.pretrain);
``--resume`` continues from OUT/checkpoint.pt. Exit status: 0 done, 1 user error (one line on stderr),
143 stopped by SIGTERM after writing a checkpoint (re-run with --resume).
"""

import sys
from pathlib import Path

# scripts/ is sys.path[0] when run as a file, and its tokenize.py would shadow the standard library's
# tokenize (imported by dataclasses via inspect/linecache): look the standard library up first.
if sys.path and Path(sys.path[0]).resolve() == Path(__file__).resolve().parent:
    sys.path.append(sys.path.pop(0))

import argparse  # noqa: E402

from celler.errors import CellerError  # noqa: E402
from celler.train.pretrain import PretrainConfig, pretrain  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--stores", nargs="+", required=True, help="token store directories (tokenize output)")
    p.add_argument("--out", required=True, help="model directory to write")
    p.add_argument("--preset", default="tiny", help="model size: tiny, small, scgpt-base (default: tiny)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a setting")
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt if present")
    args = p.parse_args(argv)
    try:
        cfg = PretrainConfig(preset=args.preset).with_overrides(args.set)
        result = pretrain(args.stores, args.out, cfg, resume=args.resume)
    except CellerError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    if result.interrupted:
        msg = f"stopped at step {result.step}; checkpoint in {args.out}; re-run with --resume"
        print(msg, file=sys.stderr)
        return 143
    return 0


if __name__ == "__main__":
    sys.exit(main())
