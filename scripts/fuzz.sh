#!/usr/bin/env bash
# One coverage-guided fuzzing campaign (atheris) on a reader of untrusted bytes:
#
#   scripts/fuzz.sh TARGET [--seconds N] [--work DIR]     # TARGET: file, records, npy, json (fuzz/targets.py)
#
# The corpus grows in DIR/corpus (default .fuzz/TARGET, ignored by git) from the target's seeds; findings go to
# DIR/findings/ and end the campaign with a non-zero status. A finding is fixed in the reader and its input kept
# in tests/fuzz_regressions/TARGET/, which tests/test_fuzz.py replays (docs/testing.md, "Fuzzing").
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" exec .venv/bin/python -m fuzz "$@"
