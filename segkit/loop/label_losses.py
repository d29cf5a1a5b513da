"""The labels' own losses: what a model says about each label on the label's own box."""

import numpy as np

from segkit.loop.judge import mask_box


def label_losses(predictor, path, labels):
    """What the model says about each label on the label's own box (Schubert et al. 2023, "Identifying
    Label Errors in Object Detection Datasets by Loss Inspection"): the backbone runs once, then the
    ROI heads take the label's box as their only proposal, as in training when a proposal falls
    exactly on its ground truth. Returns, per label (None for crowd or empty labels and classes the
    model lacks), a dict: ``probs`` ({class: p(class | box)}), ``p_label``, ``cls_loss`` (-log
    p_label), ``box_iou`` (IoU of the box the model refines it to, for the label's class, with the
    label's box), ``box_loss`` (L1 of that refinement's deltas: the training loss, whose target is
    zero here), ``mask_iou`` (the mask head's mask for the label's class against the label's mask,
    inside the box) and ``mask_loss`` (their per-pixel BCE, the training mask loss)."""
    import torch
    import torch.nn.functional as F
    from detectron2.structures import Boxes, Instances, pairwise_iou

    from segkit.inference.image_io import read_image_rgb

    names = list(predictor.class_names)
    keep = [g for g, lab in enumerate(labels)
            if not lab.get("iscrowd") and lab["class"] in names and lab["mask"].any()]
    out = [None] * len(labels)
    if not keep:
        return out
    inputs, image_rgb = predictor.preprocess(read_image_rgb(path), rgb=True)
    model, heads = predictor.model, predictor.model.roi_heads
    h, w = image_rgb.shape[:2]
    rh, rw = inputs["image"].shape[-2:]
    boxes = torch.tensor([mask_box(labels[g]["mask"]) for g in keep], dtype=torch.float32)
    scaled = Boxes((boxes * torch.tensor([rw / w, rh / h, rw / w, rh / h])).to(predictor.device))
    classes = torch.tensor([names.index(labels[g]["class"]) for g in keep], device=predictor.device)
    with torch.inference_mode():
        images = model.preprocess_image([inputs])
        features = model.backbone(images.tensor)
        box_features = heads.box_pooler([features[f] for f in heads.box_in_features], [scaled])
        predictions = heads.box_predictor(heads.box_head(box_features))
        proposals = Instances(images.image_sizes[0], proposal_boxes=scaled)
        probs = heads.box_predictor.predict_probs(predictions, [proposals])[0].cpu()
        deltas = predictions[1]
        k = deltas.shape[1] // 4
        rows = torch.arange(len(keep), device=deltas.device)
        deltas = deltas.view(len(keep), k, 4)[rows, classes if k > 1 else 0]
        refined = heads.box_predictor.box2box_transform.apply_deltas(deltas, scaled.tensor)
        box_iou = torch.diag(pairwise_iou(Boxes(refined), scaled)).cpu()
        box_loss = deltas.abs().sum(dim=1).cpu()
        mask_iou = mask_loss = [None] * len(keep)
        if heads.mask_on:
            mask_features = heads.mask_pooler([features[f] for f in heads.mask_in_features], [scaled])
            logits = heads.mask_head.layers(mask_features)
            logits = logits[rows, classes if logits.shape[1] > 1 else 0].cpu()
            gt = torch.cat([_mask_target(labels[g]["mask"], boxes[i], logits.shape[-1])
                            for i, g in enumerate(keep)]).float()
            mask_loss = F.binary_cross_entropy_with_logits(logits, gt, reduction="none").mean(dim=(1, 2)).tolist()
            pred, truth = logits > 0, gt > 0.5
            mask_iou = ((pred & truth).sum(dim=(1, 2)) / (pred | truth).sum(dim=(1, 2)).clamp(min=1)).tolist()
    for i, g in enumerate(keep):
        p = probs[i].tolist()
        p_label = p[int(classes[i])]
        out[g] = {"probs": dict(zip(names, p[:len(names)])), "p_label": p_label,
                  "cls_loss": float(-np.log(max(p_label, 1e-6))), "box_iou": float(box_iou[i]),
                  "box_loss": float(box_loss[i]), "mask_iou": mask_iou[i], "mask_loss": mask_loss[i]}
    return out


def _mask_target(mask, box, size):
    """The mask head's training target of one label: BitMasks.crop_and_resize of its mask, read from
    a crop around its box. Given the full-size mask, ROIAlign works on a float32 copy of it (48 MB a
    label on a 12 MP photo); the box's bilinear samples touch no pixel more than a step outside it,
    so a 2 px margin gives the same target (up to float rounding of the sample positions: a target
    pixel whose average lands within 1e-5 of 0.5 may fall on the other side; 1 pixel of 784 for 1
    of the 31 labels compared). Only ``mask_iou`` and ``mask_loss`` read it, which no score uses."""
    import torch
    from detectron2.structures import BitMasks

    h, w = mask.shape
    x0, y0 = max(0, int(box[0]) - 2), max(0, int(box[1]) - 2)
    x1, y1 = min(w, int(np.ceil(float(box[2]))) + 2), min(h, int(np.ceil(float(box[3]))) + 2)
    crop = torch.from_numpy(np.ascontiguousarray(mask[y0:y1, x0:x1]))[None]
    return BitMasks(crop).crop_and_resize((box - torch.tensor([x0, y0, x0, y0]))[None], size)
