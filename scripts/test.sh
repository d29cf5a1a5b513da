#!/usr/bin/env bash
# Sets up .venv if needed, then runs the whole test suite. Extra arguments go to pytest.
source "$(dirname "$0")/env.sh"
# --durations: the slowest tests in every CI log, to keep the suite under its 15-minute target.
python -m pytest -q --durations=25 tests "$@"
