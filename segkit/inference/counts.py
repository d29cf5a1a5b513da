"""How many objects of each class: the first question about a large image (rebar ends, cells,
seedlings). One home for the counts that ``predict.py`` writes (``counts.csv`` beside
``results.json``, named in segkit/inference/records.py, and its summary line) and that the app shows."""

import csv
import io


def class_counts(results, class_names):
    """{class name: instances}, every class listed (0 when absent), of one image's COCO results
    entries (category ids 1..K; segkit/inference/coco_results.py). Give U-Net results as []: their
    entries are classes present, not instances."""
    counts = {name: 0 for name in class_names}
    for r in results:
        counts[class_names[r["category_id"] - 1]] += 1
    return counts


def total_counts(rows, class_names):
    """{class name: instances} over [(file name, {class: count})]."""
    return {name: sum(counts.get(name, 0) for _, counts in rows) for name in class_names}


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
