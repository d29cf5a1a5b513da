"""``python -m segkit COMMAND``: the ``segkit`` command without its entry point installed."""

import sys

if __name__ == "__main__":
    from segkit.cli.main import main

    sys.exit(main())
