"""The data loop: a trained model says where the labels are wrong and which images to label next.

One module per job, in the order a user meets them:

- ``review`` - error review of an evaluation, worst images first (``python -m segkit.loop.review``);
- ``suspects_cli`` - suspect labels, cross-validated (``python -m segkit.loop.suspects_cli``), built
  from ``folds`` (the fold models), ``judge`` (predictions against labels: the four kinds of
  suspect), ``label_losses`` (the model on each label's own box) and ``suspect_outputs`` (CSV,
  JSON, the page, LabelMe review files);
- ``rank`` - what to label next (``predict.py --rank``), from ``uncertainty`` (flip disagreement
  and score margin) and ``diversity`` (core-set on the model's features).

The loop comes after inference (it runs predictors) and before the app and the command line.
"""
