"""Peak RSS of a Python script run in a fresh process: its own high-water mark (VmHWM).

Not getrusage / wait4's ru_maxrss: Linux carries the parent's RSS at fork into ru_maxrss across
exec, so under a pytest process grown to 2.6 GB every child reads 2.6 GB. Used by
benchmarks/tiling.py and tests/test_large_images.py.
"""

import subprocess
import sys

# Runs the script named first on its command line in this process (runpy), then prints its peak.
_RUNNER = r"""
import runpy, sys
sys.argv = sys.argv[1:]
try:
    runpy.run_path(sys.argv[0], run_name="__main__")
finally:
    with open("/proc/self/status") as f:
        kb = next(int(l.split()[1]) for l in f if l.startswith("VmHWM:"))
    print("PEAK_RSS_MB", kb // 1024, file=sys.stderr)
"""


def run_with_peak_rss(script, *args, **run_kwargs):
    """(CompletedProcess with text output, peak RSS in MB or None) of ``python script args...``."""
    proc = subprocess.run([sys.executable, "-c", _RUNNER, str(script), *map(str, args)],
                          capture_output=True, text=True, **run_kwargs)
    peak = proc.stderr.split("PEAK_RSS_MB")[1].split()[0] if "PEAK_RSS_MB" in proc.stderr else None
    return proc, None if peak is None else int(peak)
