"""Rebuild the stored records of the full runs from a folder of full runs.

    python -m tests.experiments.make_records LAB

LAB holds ``t<threads>/<name>/seed-<s>/`` folders (one full run per seed, e.g.
``gradwatch experiment NAME --seed S --seeds 1 --threads T --out LAB/tT/NAME``, or one
``--seeds 3`` run per thread count). Each ``LAB/tT/NAME`` is gathered (claims judged as the
code states them now, figures drawn) and written to ``records/NAME_full_tT.json``.
"""

import json
import sys
from pathlib import Path

from gradwatch.experiments import gather
from gradwatch.experiments.runner import record

RECORDS = Path(__file__).parent / "records"


def main(lab: str) -> None:
    for folder in sorted(Path(lab).glob("t*/*")):
        if not any(folder.glob("seed-*/result.json")):
            continue
        result = gather(folder.name, folder)
        path = RECORDS / f"{folder.name}_full_{folder.parent.name}.json"
        path.write_text(json.dumps(record(result), separators=(",", ":")) + "\n", "utf-8")
        verdicts = " ".join("✓" if c["holds"] else "✗" for c in result["claims"])
        print(f"{path.name}: seeds {result['seeds']}, {verdicts}")


if __name__ == "__main__":
    main(sys.argv[1])
