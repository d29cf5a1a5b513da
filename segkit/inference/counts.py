"""How many objects of each class: the first question about a large image (rebar ends, cells,
seedlings). One home for the counts that ``predict.py`` writes (``counts.csv`` beside
``results.json``, named in segkit/inference/records.py, and its summary line) and that the app shows."""

import csv
import io
from collections import Counter

def class_counts(prediction):
    """{class name: instances} of one prediction, every class listed (0 when absent). U-Net
    results have no instances: every count is 0."""
    counts = Counter()
    if not prediction.is_semantic and prediction.instances is not None:
        names = prediction.class_names
        counts.update(names[c] if 0 <= c < len(names) else str(c)
                      for c in prediction.instances.pred_classes.tolist())
    return {name: counts.get(name, 0) for name in prediction.class_names}


def counts_line(counts):
    """"12 rebar, 3 stirrup" for the classes present, most frequent first; "none" when empty."""
    present = sorted(((n, c) for c, n in counts.items() if n), key=lambda x: (-x[0], x[1]))
    return ", ".join(f"{n} {c}" for n, c in present) or "none"


def counts_csv(rows, class_names):
    """CSV text: one row per image (``file_name``, ``instances``, one column per class); ``rows``
    is [(file name, {class: count})]."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["file_name", "instances", *class_names])
    for name, counts in rows:
        writer.writerow([name, sum(counts.values()), *(counts.get(c, 0) for c in class_names)])
    return buf.getvalue()


def counts_from_results(results, class_names):
    """{class name: instances} of one image's COCO results entries (category ids 1..K)."""
    counts = {name: 0 for name in class_names}
    for r in results:
        name = class_names[r["category_id"] - 1]
        counts[name] += 1
    return counts
