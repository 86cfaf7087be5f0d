"""`python tests/slow_scan_cli.py SECONDS SHARD -- ARGS`: the real CLI, with the NaN/Inf scan of SHARD's files
slowed by SECONDS (a fault at a chosen moment): its segments are read and sent, then wait at their gate for the
verdict. Each segment of SHARD that reaches its gate before the scan has ended says so on stderr ("gate: ...").
With `fail` for SECONDS the scan of SHARD's files raises RuntimeError instead (a bug, not a bad file)."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

import ingest.stages.shard as shard_mod
from ingest.cli.app import main
from ingest.stages.npy import NpyInfo, scan_nonfinite

FAIL = sys.argv[1] == "fail"
SECONDS, SHARD = 0.0 if FAIL else float(sys.argv[1]), int(sys.argv[2])
_settle = shard_mod.ValidShard.settle


def slow_scan(info: NpyInfo) -> np.ndarray:
    if Path(info.path).stem.endswith(f"_{SHARD}"):
        if FAIL:
            raise RuntimeError(f"scan of {Path(info.path).name} broke")
        time.sleep(SECONDS)
    return scan_nonfinite(info)


def settle(self: shard_mod.ValidShard) -> None:
    if self.shard == SHARD and self.scan is not None and not (self.scan.img.done() and self.scan.text.done()):
        print(f"gate: a segment of shard {SHARD} waits for its scan", file=sys.stderr, flush=True)
    _settle(self)


if __name__ == "__main__":
    vars(shard_mod)["scan_nonfinite"] = slow_scan  # what validate_shard calls
    shard_mod.ValidShard.settle = settle  # type: ignore[method-assign]
    sys.argv = ["laion-ingest", *sys.argv[sys.argv.index("--") + 1 :]]
    main()
