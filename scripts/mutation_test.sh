#!/usr/bin/env bash
# Mutation testing (mutmut, pinned in requirements-dev.txt) of the modules where a silent bug would harm a
# patient: ecgfm/labels.py, ecgfm/records/preprocess.py, interpreter/findings.py, interpreter/heart_rate.py, against the
# fast tests that specify them. The modules and tests are listed in setup.cfg [mutmut]; docs/testing.md has the
# last result and why each surviving mutant is harmless. Slow (about an hour on one core): not part of CI.
#
#   scripts/mutation_test.sh                                   every mutant (results are cached in mutants/)
#   scripts/mutation_test.sh "ecgfm.labels.*"                  only these mutants (mutmut's name patterns)
#   MUTMUT_CHILDREN=4 scripts/mutation_test.sh                 more parallel workers (default 1)
#
# Afterwards: .venv/bin/mutmut results (survivors), .venv/bin/mutmut show NAME (a mutant's diff).
set -euo pipefail
cd "$(dirname "$0")/.."

# mutmut copies the tree into mutants/ and runs the tests there; tests/conftest.py finds the shared fixtures at
# <tree>/../shared, which for mutants/ is ./shared: link it for the run unless it exists.
if [ ! -e shared ]; then
  ln -s ../shared shared
  trap 'rm -f shared' EXIT
fi

.venv/bin/mutmut run --max-children "${MUTMUT_CHILDREN:-1}" "$@"
.venv/bin/mutmut results
