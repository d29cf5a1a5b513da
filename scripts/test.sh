#!/usr/bin/env bash
# Sets up .venv if needed, then runs the whole test suite. Extra arguments go to pytest.
source "$(dirname "$0")/env.sh"
python -m pytest -q tests "$@"
