#!/usr/bin/env bash
# The mutation check of the pure core: mutmut mutates src/genv/domain/ and
# src/genv/enforce/rules.py and runs their unit tests against each mutant (configuration:
# [tool.mutmut] in pyproject.toml). Outside CI: it takes a few minutes of CPU.
#
#   bench/mutation.sh            # 2 workers; MUTATION_JOBS=1 for one
#
# It makes its own virtual environment (.venv-mutation, the `mutation` extra) on first use,
# starts from a clean mutants/ folder, and prints the score per file (bench/mutation_score.py,
# which takes the equivalent mutants listed in bench/mutation-equivalent.txt into account).
# The full log goes to bench/out/mutation.log. Exit status 1 when under 95 % are killed.
set -euo pipefail
cd "$(dirname "$0")/.."

venv=${MUTATION_VENV:-.venv-mutation}
jobs=${MUTATION_JOBS:-2}
if [ ! -x "$venv/bin/mutmut" ]; then
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q -e '.[test,mutation]'
fi

mkdir -p bench/out
rm -rf mutants
echo "mutmut run --max-children $jobs (log: bench/out/mutation.log)"
"$venv/bin/mutmut" run --max-children "$jobs" >bench/out/mutation.log 2>&1 || {
    tail -c 2000 bench/out/mutation.log
    exit 2
}
"$venv/bin/mutmut" results --all true >bench/out/mutation-results.txt 2>/dev/null
exec "$venv/bin/python" bench/mutation_score.py bench/out/mutation-results.txt
