"""The Gradio app (``python app.py``): see :mod:`segkit.app.gradio_app`."""
