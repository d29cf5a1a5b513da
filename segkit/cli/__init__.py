"""The installed ``segkit`` command: the last stage, it only dispatches to the others."""
