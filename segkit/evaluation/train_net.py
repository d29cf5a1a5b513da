"""``train_net.py`` (``segkit train`` / ``segkit val``): our Trainer with the evaluators of this
stage, as detectron2's tools/train_net.py subclasses DefaultTrainer with ``build_evaluator``."""

import sys

from segkit.engine.launch import run
from segkit.engine.trainer import Trainer as BaseTrainer
from segkit.evaluation.build import build_evaluator


class Trainer(BaseTrainer):
    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None):
        return build_evaluator(cfg, dataset_name, output_folder)


def main(argv=None):
    """Train (or with ``--eval-only`` evaluate); ``argv`` as on train_net.py's command line."""
    run(Trainer, argv)
    return 0


def evaluate_main(argv=None):
    """``segkit val``: ``train_net.py --eval-only`` with the rest of the line."""
    return main(["--eval-only", *(sys.argv[1:] if argv is None else argv)])
