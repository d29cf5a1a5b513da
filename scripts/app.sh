#!/usr/bin/env bash
# Starts the Gradio app inside the project's environment; arguments go to app.py.
source "$(dirname "$0")/env.sh"
exec python app.py "$@"
