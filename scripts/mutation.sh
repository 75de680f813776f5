#!/usr/bin/env bash
# Mutation testing (mutmut 3) of one algorithm module against its fast tests; see docs/TESTING.md.
#
#   scripts/mutation.sh solver|mixers|mixed_set|objectives [--max-children N] [--resume | --survivors | --timeouts]
#
# --resume keeps the previous run in build/mutation/<module> (its source copy and its results),
# copies the tests again and runs the mutants not yet checked (after an interruption);
# --survivors does the same for the mutants that survived (after new tests were written);
# --timeouts for those that timed out (mutmut also stops a mutant after 15 x (its tests'
# estimated time + 1 s) of wall-clock time, so a run starved of CPU by other work on the machine
# records healthy mutants as timeouts: rerun them when the machine is free).
#
# Slow (minutes to hours on 2 cores) and not part of CI. The module's settings are in
# pyproject.toml, [tool.supermix.mutation.<module>]: the file to mutate, the tests to run, the
# mutant names to try. mutmut names mutants after their path and puts only ./, src/ and source/
# on sys.path, so python/supermix is staged as ./supermix in build/mutation/<module>, with the
# tests and a pyproject.toml whose [tool.mutmut] selects that module. supermix_ext (never
# mutated) comes from the repository, compiled library included. Results stay in that folder:
#   cd build/mutation/<module> && ../../../.venv/bin/mutmut results   # survivors
#   cd build/mutation/<module> && ../../../.venv/bin/mutmut show NAME # a mutant's diff
# The summary (killed / survived / ... per module) is written to build/mutation/<module>.summary.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
module=${1:?usage: scripts/mutation.sh solver|mixers|mixed_set|objectives [--max-children N] [--resume | --survivors | --timeouts]}
shift
children=2
resume=0
while [ $# -gt 0 ]; do
  case $1 in
    --max-children) children=${2:?}; shift 2 ;;
    --resume) resume=1; retry="not checked"; shift ;;
    --survivors) resume=1; retry="survived"; shift ;;
    --timeouts) resume=1; retry="timeout"; shift ;;
    *) echo "mutation.sh: unknown option $1" >&2; exit 2 ;;
  esac
done
PY=$REPO/.venv/bin/python
MUTMUT=$REPO/.venv/bin/mutmut
[ -x "$MUTMUT" ] || { echo "mutmut is missing: .venv/bin/pip install mutmut==3.8.1 (the dev extra's pin)" >&2; exit 2; }

work=$REPO/build/mutation/$module
if [ $resume = 1 ]; then
  [ -d "$work/mutants" ] || { echo "mutation.sh: no previous run in $work" >&2; exit 2; }
  rm -f "$work"/tests/*.py
else
  rm -rf "$work"
  mkdir -p "$work/tests"
  # The package as it is in the working tree, without caches.
  (cd python && tar --exclude=__pycache__ -cf - supermix) | (cd "$work" && tar -xf -)
fi
cp tests/conftest.py tests/testing.py "$work/tests/"

# [tool.mutmut] for this module: the repository's table with only_mutate and the tests replaced.
"$PY" - "$module" "$work" <<'EOF'
import json, sys, tomllib
from pathlib import Path

module, work = sys.argv[1], Path(sys.argv[2])
conf = tomllib.loads(Path("pyproject.toml").read_text(encoding="utf-8"))["tool"]
settings = conf["supermix"]["mutation"].get(module)
if settings is None:
    sys.exit(f"mutation.sh: unknown module {module!r}; known: {sorted(conf['supermix']['mutation'])}")
table = dict(conf["mutmut"])
table["only_mutate"] = [settings["mutate"]]
table["pytest_add_cli_args_test_selection"] = settings["tests"]
lines = ["[tool.mutmut]"] + [f"{key} = {json.dumps(value, ensure_ascii=False)}" for key, value in table.items()]
(work / "pyproject.toml").write_text("\n".join(lines) + "\n", encoding="utf-8")
for test in settings["tests"]:
    name = test.split("::")[0]
    target = work / name
    if not target.exists():
        target.write_bytes(Path(name).read_bytes())
(work / "mutants.txt").write_text("\n".join(settings["mutants"]) + "\n", encoding="utf-8")
EOF

mapfile -t patterns < "$work/mutants.txt"
cd "$work"
if [ $resume = 1 ]; then
  # Named mutants are always rerun, so name exactly those without a verdict or that survived.
  "$MUTMUT" results --all true > results.txt 2>&1 || true
  mapfile -t patterns < <("$PY" - "$retry" <<'EOF'
import fnmatch, re, sys
from pathlib import Path
patterns = Path("mutants.txt").read_text(encoding="utf-8").split()
for line in Path("results.txt").read_text(encoding="utf-8").splitlines():
    m = re.match(r"\s*(\S+): (.+)$", line)
    if m and m.group(2) == sys.argv[1] and any(fnmatch.fnmatch(m.group(1), p) for p in patterns):
        print(m.group(1))
EOF
)
  [ ${#patterns[@]} -gt 0 ] || { echo "mutation.sh: nothing left to run" >&2; exit 0; }
  echo "running ${#patterns[@]} mutants ($retry)"
fi
# As scripts/test.sh: Triton under the interpreter without a GPU, the compiled library required.
export SUPERMIX_REQUIRE_COMPILED=1
if ! "$PY" -c "import torch; assert torch.cuda.is_available()" 2>/dev/null; then
  export TRITON_INTERPRET=1
fi
export OMP_NUM_THREADS=1
start=$(date +%s)
set +e
"$MUTMUT" run --max-children "$children" "${patterns[@]}" > "run$([ $resume = 1 ] && echo "-${retry// /-}").log" 2>&1
status=$?
set -e
"$MUTMUT" results --all true > results.txt 2>&1 || true
"$PY" - "$module" "$status" "$(( $(date +%s) - start ))" <<'EOF'
import collections, fnmatch, re, sys
from pathlib import Path

module, status, seconds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
patterns = Path("mutants.txt").read_text(encoding="utf-8").split()
counts = collections.Counter()
survivors = []
for line in Path("results.txt").read_text(encoding="utf-8").splitlines():
    m = re.match(r"\s*(\S+): (.+)$", line)
    if not m or not any(fnmatch.fnmatch(m.group(1), p) for p in patterns):
        continue
    counts[m.group(2)] += 1
    if m.group(2) == "survived":
        survivors.append(m.group(1))
tried = sum(counts.values())
killed = counts["killed"] + counts["timeout"] + counts["segfault"]
score = f"{100 * killed / tried:.1f}%" if tried else "n/a"
text = (f"{module}: {tried} mutants, killed {counts['killed']}, timeout {counts['timeout']}, "
        f"survived {counts['survived']}, no tests {counts['no tests']}, other "
        f"{tried - killed - counts['survived'] - counts['no tests']} -> {score} killed "
        f"(mutmut exit {status}, {seconds} s)\n")
text += "".join(f"  survived: {name}\n" for name in survivors)
Path("../" + module + ".summary").write_text(text, encoding="utf-8")
print(text, end="")
EOF
