"""What to label next, by coverage: images ranked so the picks spread over what the pool looks like.

``predict.py --input unlabelled/ --rank diversity [--labelled data/] --top K`` uses it. Each image
becomes one vector: the model's own backbone features (every FPN level average-pooled over the
image, concatenated, unit length), so "alike" means alike to the model being improved. The ranking
is core-set selection by k-centre greedy (Sener & Savarese, ICLR 2018): each next pick is the image
farthest from everything labelled or already picked, so K picks cover the pool instead of K copies
of one hard scene (consecutive video frames are the usual case). Without ``--labelled`` the first
pick is the image nearest the pool's mean.

``--rank uncertainty-diversity`` multiplies the two: each next pick maximises (its uncertainty /
the pool's largest) x (its distance to the nearest labelled or picked image / the largest such
distance), so a doubtful image close to one already chosen waits its turn.
"""

import numpy as np
import torch


def embedding(predictor, image):
    """Unit-length vector of one image: the backbone's FPN levels average-pooled and concatenated."""
    model = predictor.model
    if not hasattr(model, "backbone") or not hasattr(model, "preprocess_image"):
        raise ValueError(f"--rank diversity needs a detectron2 model with a backbone, not "
                         f"{type(model).__name__}")
    inputs, _ = predictor.preprocess(image)
    with torch.inference_mode():
        images = model.preprocess_image([inputs])
        features = model.backbone(images.tensor)
    vector = torch.cat([features[k].mean(dim=(0, 2, 3)) for k in sorted(features)]).float().cpu().numpy()
    return vector / max(float(np.linalg.norm(vector)), 1e-12)


def _distances(a, b):
    """Euclidean distances between the rows of a (N x D) and b (M x D), without an N x M x D array."""
    sq = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * a @ b.T
    return np.sqrt(np.clip(sq, 0.0, None))


def k_centre_order(pool, labelled=None, weights=None):
    """Indices of ``pool`` (N x D) in pick order with the pick scores.

    Each pick maximises weight x distance to the nearest row of ``labelled`` or of the picks so far
    (weights: one per pool row in [0, 1], default 1; distances scaled by the largest distance of
    the first pick). Rows at distance 0 (already labelled) come last, by weight."""
    pool = np.asarray(pool, dtype=np.float64)
    n = len(pool)
    if n == 0:
        return [], []
    w = np.ones(n) if weights is None else np.asarray(weights, dtype=np.float64)
    if labelled is not None and len(labelled):
        labelled = np.asarray(labelled, dtype=np.float64)
        nearest = _distances(pool, labelled).min(axis=1)
    else:
        # nothing labelled: the first pick is the most typical image (nearest the mean), weighted
        nearest = None
    order, scores, left, scale = [], [], np.ones(n, dtype=bool), None
    for _ in range(n):
        if nearest is None:
            score = w / (1.0 + _distances(pool, pool.mean(axis=0, keepdims=True))[:, 0])
        else:
            if scale is None:  # fixed once, so the scores of later picks show how close they are
                scale = nearest.max() if nearest.max() > 0 else 1.0
            score = w * nearest / scale + 1e-9 * w  # ties at distance 0: by weight
        score = np.where(left, score, -np.inf)
        i = int(np.argmax(score))
        order.append(i)
        scores.append(float(score[i]))
        left[i] = False
        d = _distances(pool, pool[i:i + 1])[:, 0]
        nearest = d if nearest is None else np.minimum(nearest, d)
    return order, scores
