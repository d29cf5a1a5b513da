"""Instance and semantic segmentation on detectron2: LabelMe -> COCO -> train -> evaluate -> serve.

Stages, each importing only from the ones before it:
data -> modeling -> engine -> evaluation -> inference -> loop -> app -> cli
"""

__version__ = "0.1.0"
