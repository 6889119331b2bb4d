"""`make bench`: run every benchmark scenario and print the tables."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import sft  # noqa: E402

if __name__ == "__main__":
    print("## SFT: variable-length conversations, packing off vs on\n")
    sft.main(sys.argv[1:])
