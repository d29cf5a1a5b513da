#!/usr/bin/env python
"""Gradio app for a trained checkpoint (upload an image, see and download its segmentation).

    python app.py [--weights RUN_OR_CHECKPOINT]   (default: the latest run) [--host 127.0.0.1] [--port 7860]

Starts without a checkpoint too and says on the page which command to run first.
See segkit/app/gradio_app.py (also for calling it from Python with gradio_client).
"""

import sys

from segkit.app.gradio_app import main

if __name__ == "__main__":
    sys.exit(main())
