"""`make bench`: runs every benchmarks/table_*.py script and prints its table.

Each table script is standalone (``python benchmarks/table_X.py --help``) and
prints one markdown table with the machine, date and command it ran under.
"""

import pathlib
import subprocess
import sys

HERE = pathlib.Path(__file__).resolve().parent


def main() -> int:
    failed = []
    for script in sorted(HERE.glob("table_*.py")):
        print(f"\n### {script.name}\n", flush=True)
        if subprocess.call([sys.executable, str(script)]) != 0:
            failed.append(script.name)
    if failed:
        print(f"\nfailed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
