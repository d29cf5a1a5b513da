"""The suspect finder's outputs: the ranked list (CSV, JSON), a static page with a picture per
image, and a LabelMe review file per image with its suspects flagged."""

import csv
import html
import io
import os

import cv2
import numpy as np

from segkit.data.atomic import write_bytes, write_json, write_text
from segkit.data.labelme import labelme_document, labelme_shape, mask_to_polygons
from segkit.loop.judge import KIND_TEXT, KINDS, image_path, mask_box, mask_of

CSV_FIELDS = ["rank", "score", "kind", "file_name", "image_id", "annotation_id", "label_class",
              "predicted_class", "prediction_score", "iou", "label_probability", "box", "fold", "source_file",
              "review_json"]
COLORS = {"label": (40, 200, 40), "suspect": (230, 30, 30), "prediction": (250, 200, 0)}


def _outline(img, mask, color, thickness=1):
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    cv2.drawContours(img, contours, -1, color, thickness)


def draw_suspects(image_rgb, labels, predictions, suspects):
    """Labels in green, suspect labels in red, the predictions behind the suspects in yellow,
    each suspect numbered with its rank. Labels and predictions: a ``mask`` or its ``rle``."""
    img = image_rgb.copy()
    by_id = {g["id"]: g for g in labels}
    for g in labels:
        _outline(img, mask_of(g), COLORS["label"])
    for s in suspects:
        mask = None
        if s["prediction_index"] is not None:
            mask = mask_of(predictions[s["prediction_index"]])
            _outline(img, mask, COLORS["prediction"], 2)
        if s["annotation_id"] is not None:
            mask = mask_of(by_id[s["annotation_id"]])
            _outline(img, mask, COLORS["suspect"], 2)
        x0, y0, _, _ = mask_box(mask)
        cv2.putText(img, str(s["rank"]), (int(x0), max(int(y0) - 2, 10)), cv2.FONT_HERSHEY_SIMPLEX,
                    0.4, COLORS["suspect"], 1, cv2.LINE_AA)
    return img


def review_document(image_file, json_path, labels, predictions, suspects, height, width):
    """The LabelMe document of the review folder: every label as polygons, suspects flagged.
    Labels and predictions: a ``mask`` or its ``rle``."""
    flagged = {}
    for s in suspects:
        if s["annotation_id"] is not None:
            flagged.setdefault(s["annotation_id"], []).append(s)
    shapes, next_group = [], 1

    def add(label, mask, notes):
        nonlocal next_group
        polygons = mask_to_polygons(mask)
        group_id = None
        if len(polygons) > 1:
            group_id, next_group = next_group, next_group + 1
        for points in polygons:
            shapes.append(labelme_shape(label, points, group_id, description="; ".join(_describe(s) for s in notes),
                                        flags={f"suspect_{s['kind']}": True for s in notes}))

    for g in labels:
        if g["iscrowd"]:
            add("__ignore__", mask_of(g), [])
        else:
            add(g["class"], mask_of(g), flagged.get(g["id"], []))
    for s in suspects:
        if s["kind"] == "missing_label":
            add(s["predicted_class"], mask_of(predictions[s["prediction_index"]]), [s])
    return labelme_document(shapes, image_file, json_path, width, height)


def _describe(s):
    text = f"suspect #{s['rank']} ({KIND_TEXT[s['kind']]}, score {s['score']:.2f})"
    if s["predicted_class"] is not None:
        text += f": model says {s['predicted_class']} {s['prediction_score']:.2f}"
        if s.get("iou") is not None:
            text += f", mask IoU {s['iou']:.2f}"
    if s.get("label_probability") is not None:
        text += f"; on the label's box p({s['label_class']}) {s['label_probability']:.2f}"
    return text


def write_html(path, suspects, title):
    rows = []
    for s in suspects:
        link = html.escape(s["review_json"] or "")
        rows.append(
            f"<tr><td>{s['rank']}</td><td>{s['score']:.2f}</td><td>{html.escape(KIND_TEXT[s['kind']])}</td>"
            f"<td>{html.escape(s['label_class'] or '')}</td><td>{html.escape(s['predicted_class'] or '')}"
            f"{'' if s['prediction_score'] is None else ' %.2f' % s['prediction_score']}</td>"
            f"<td>{html.escape(s['file_name'])}<br><small>{html.escape(s['source_file'] or '')}</small>"
            f"<br><a href='{link}'>{link}</a></td>"
            f"<td><img src='{html.escape(s['picture'])}' loading='lazy'></td></tr>")
    write_text(path, f"""<!doctype html>
<html><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>body{{font-family:sans-serif}} table{{border-collapse:collapse}} td,th{{border:1px solid #ccc;
padding:4px;vertical-align:top}} img{{max-width:360px}}</style></head><body>
<h1>{html.escape(title)}</h1>
<p>{len(suspects)} suspect(s), most likely annotation errors first. In the pictures: labels green,
the suspect label red (with its rank), the model's prediction yellow. Fix them in LabelMe
(<code>labelme review/</code>: the suspect shapes carry flags and a description), then convert again.</p>
<table><tr><th>#</th><th>score</th><th>kind</th><th>label</th><th>model</th><th>image / source / review JSON</th><th>picture</th></tr>
{chr(10).join(rows)}
</table></body></html>
""")


def write_outputs(out_dir, data_dir, coco, judged, title):
    """Rank ``judged`` ([(image, labels, predictions, suspects, fold)]) and write every output;
    returns the ranked suspect records. ``predictions``: {index: prediction} of those the suspects
    name (``prediction_index``); labels and predictions carry a ``mask`` or its ``rle``, decoded
    where it is drawn: one full-size mask at a time."""
    from segkit.loop.review import annotation_source
    from segkit.inference.image_io import read_image_rgb

    ranked = sorted(((s, i) for i, (_, _, _, sus, _) in enumerate(judged) for s in sus),
                    key=lambda t: (-t[0]["score"], judged[t[1]][0]["id"], KINDS.index(t[0]["kind"])))
    for rank, (s, _) in enumerate(ranked, start=1):
        s["rank"] = rank
    records = []
    for image, labels, predictions, sus, fold in judged:
        if not sus:
            continue
        stem = os.path.splitext(image["file_name"].replace("/", "__"))[0]
        review_json = os.path.join(out_dir, "review", stem + ".json")
        img_file = image_path(data_dir, image)
        document = review_document(img_file, review_json, labels, predictions, sus,
                                   image["height"], image["width"])
        write_json(review_json, document)
        picture = os.path.join("images", stem + ".png")
        drawn = draw_suspects(read_image_rgb(img_file), labels, predictions, sus)
        write_bytes(os.path.join(out_dir, picture), cv2.imencode(".png", cv2.cvtColor(drawn, cv2.COLOR_RGB2BGR))[1].tobytes())
        for s in sus:
            s.update(file_name=image["file_name"], image_id=image["id"], fold=fold,
                     source_file=annotation_source(coco, image),
                     review_json=os.path.relpath(review_json, out_dir).replace(os.sep, "/"),
                     picture=picture.replace(os.sep, "/"))
    records = [s for s, _ in ranked]
    for s in records:
        s.pop("prediction_index", None)
    write_json(os.path.join(out_dir, "suspects.json"), {"suspects": records, "kinds": KIND_TEXT})
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CSV_FIELDS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(records)
    write_text(os.path.join(out_dir, "suspects.csv"), buf.getvalue())
    write_html(os.path.join(out_dir, "index.html"), records, title)
    return records
