"""``python predict.py`` / ``segkit predict``: predict_cli's command with ``--rank`` run by the data
loop's ranking (segkit.loop.rank). Inference comes before the loop and cannot import it, so the
command, in the last stage, hands the ranking in."""

from segkit.inference.predict_cli import main as predict_main


def main(argv=None):
    from segkit.loop.rank import rank_images  # only --rank needs it

    return predict_main(argv, rank_images=rank_images)
