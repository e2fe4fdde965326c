"""Per-module mutation score from `mutmut results --all true` (read on stdin), for `make mutation`.

mutmut prints one line per mutant, "    include.mlops.registry.gate.x_decide_promotion__mutmut_7: killed";
this groups them by module and prints killed / total. Killed counts test failures and timeouts (a mutant
that loops forever was caught); "no tests", "survived", "suspicious" and "not checked" are not killed,
so a module whose tests never ran scores 0, not 100. Exits 1 when a module is below --min (percent).

With patterns (the mutant names `make mutation` passes to `mutmut run`, fnmatch globs) only the mutants
they match count, grouped by the first pattern that matches: "include.mlops.pkg.mod.x?Class?*" scores the
class Class alone (as "include.mlops.pkg.mod.Class"), not the module.
"""

from __future__ import annotations

import argparse
import fnmatch
import re
import sys
from collections import Counter, defaultdict

_LINE = re.compile(r"^\s*(?P<module>[\w.]+?)\.x[_\u01c1].*__mutmut_\d+: (?P<status>.+?)\s*$")
KILLED = frozenset({"killed", "timeout", "caught by type check"})


def _label(pattern: str) -> str:
    # "pkg.mod.*" -> "pkg.mod"; "pkg.mod.x?Class?*" -> "pkg.mod.Class"
    return re.sub(r"\.x\?(\w+)\?", r".\1", pattern).removesuffix("*").rstrip(".?")


def scores(lines: list[str], patterns: list[str] | None = None) -> dict[str, Counter[str]]:
    by_module: dict[str, Counter[str]] = defaultdict(Counter)
    for line in lines:
        m = _LINE.match(line)
        if not m:
            continue
        if not patterns:
            by_module[m["module"]][m["status"]] += 1
            continue
        name = line.strip().rsplit(": ", 1)[0]
        unit = next((_label(p) for p in patterns if fnmatch.fnmatchcase(name, p)), None)
        if unit is not None:
            by_module[unit][m["status"]] += 1
    return dict(by_module)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--min", type=float, default=85.0, help="lowest acceptable percent killed per module")
    ap.add_argument("patterns", nargs="*", help="mutant-name globs to score, one unit each (default: all, by module)")
    args = ap.parse_args(argv)
    by_module = scores(sys.stdin.read().splitlines(), args.patterns)
    if not by_module:
        print("no mutant results on stdin: run `mutmut run` first", file=sys.stderr)
        return 1
    low = []
    print(f"{'module':45} {'killed':>7} {'total':>6} {'score':>7}  not killed")
    for module, counts in sorted(by_module.items()):
        total = sum(counts.values())
        killed = sum(c for s, c in counts.items() if s in KILLED)
        pct = 100.0 * killed / total
        rest = ", ".join(f"{c} {s}" for s, c in sorted(counts.items()) if s not in KILLED) or "-"
        print(f"{module:45} {killed:>7} {total:>6} {pct:>6.1f}%  {rest}")
        if pct < args.min:
            low.append(module)
    for pattern in args.patterns:
        if _label(pattern) not in by_module:
            print(f"{_label(pattern):45} no mutant matches {pattern!r}")
            low.append(_label(pattern))
    if low:
        print(f"below {args.min:.0f} % killed: {', '.join(low)} (see `mutmut results`, `mutmut show <name>`)")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
