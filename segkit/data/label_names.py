"""Class names as annotators write them: labels numbered per instance, and renaming labels.

Labels numbered per instance. Annotators often number the objects of a kind instead of naming the
kind (``yolk1``, ``yolk2``, ... ``yolk21``), and each number then becomes a class of its own. A set
of labels is taken for such a numbering, a *numbered group*, when all of this holds:

- at least 2 distinct labels are one stem plus a trailing number. A numbered label is a stem, any
  separators (``_``, ``-``, spaces), then digits; the stem ends in a character that is neither a
  digit nor a separator. ``yolk1``, ``yolk_2`` and ``yolk-03`` share the stem ``yolk``; ``car`` and
  ``PS4-Controller`` are not numbered (no trailing digits); a lone ``model3`` is no group. Stems
  are compared exactly as written (case-sensitive, like class names);
- the smallest number is 0 or 1: counting objects starts at the first one, while numbers that are
  part of real names seldom start there (``PS4``/``PS5``, ``A320``/``A380``, ``model3``/``model5``);
- not every one of the labels marks two or more instances in the same image: an instance number
  names one object of its image, so labels that each mark several objects of an image name kinds
  (``grade1``..``grade3`` of tumour cells).

Renaming (``labelme2coco.py --label-map FILE`` and ``--merge-numbered``), decided once every label of
the folder is known: a label the map names becomes exactly the map's new name (several old names
to one new name merge them); with ``merge_numbered`` the numbered groups among the other labels
become their stem, which the map renames too when it names it (``{"yolk": "egg yolk"}``). The
numbered groups are looked for among the labels the map leaves alone. LabelMe's ``__ignore__``
and ``_background_`` keep their meaning: they can be neither renamed nor a new name.
"""

import json
import re
from collections import Counter, defaultdict
from dataclasses import dataclass

from segkit.data.labelme import BACKGROUND_LABEL, IGNORE_LABEL

NUMBERED_LABEL = re.compile(r"^(?P<stem>.*[^\d\s_-])[\s_-]*(?P<number>\d+)$")
RESERVED_LABELS = (IGNORE_LABEL, BACKGROUND_LABEL)
SHOWN_NAMES = 4  # names listed in a one-line message before "and N more"


class LabelNamesError(ValueError):
    """A label map file that cannot be used, or a class list that names labels renamed away; the
    message names the file or the labels and says what is wrong, on one line."""


def split_number(label):
    """``(stem, number)`` of a label that ends in a number (``"yolk_12"`` -> ``("yolk", 12)``), else None."""
    match = NUMBERED_LABEL.match(label)
    return (match["stem"], int(match["number"])) if match else None


@dataclass
class NumberedGroup:
    stem: str
    instances: dict  # label -> instances in the whole folder, labels in number order

    @property
    def labels(self):
        return list(self.instances)

    @property
    def used_once(self):
        return sum(1 for n in self.instances.values() if n == 1)

    def describe(self, noun="labels"):
        """``yolk1..yolk21 (21 labels, 7 used once)``."""
        return f"{self.labels[0]}..{self.labels[-1]} ({len(self.instances)} {noun}, {self.used_once} used once)"


def numbered_groups(instances_per_image, exclude=()):
    """The numbered groups (rules in the module docstring) among the labels of ``instances_per_image``
    (one mapping label -> instances per image, ignored regions left out), without the labels in
    ``exclude``; sorted by stem."""
    total = Counter()
    repeated = set()  # labels that mark two or more instances of one image
    for counts in instances_per_image:
        for label, n in counts.items():
            total[label] += n
            if n > 1:
                repeated.add(label)
    by_stem = defaultdict(list)
    for label in total:
        split = split_number(label) if label not in exclude else None
        if split is not None:
            by_stem[split[0]].append((split[1], label))
    groups = []
    for stem, numbered in sorted(by_stem.items()):
        numbered.sort()
        if len(numbered) < 2 or numbered[0][0] > 1 or all(label in repeated for _, label in numbered):
            continue
        groups.append(NumberedGroup(stem, {label: total[label] for _, label in numbered}))
    return groups


def _no_duplicate_keys(pairs):
    keys = Counter(k for k, _ in pairs)
    twice = sorted(k for k, n in keys.items() if n > 1)
    if twice:
        raise LabelNamesError(f"the label {twice[0]!r} is mapped twice")
    return dict(pairs)


def read_label_map(path):
    """The ``{"old label": "new label"}`` renaming of a ``--label-map`` file: one JSON object whose
    values are non-empty strings (a UTF-8 BOM allowed, as Windows editors write it). Raises
    :class:`LabelNamesError` naming the file and the problem."""
    try:
        with open(path, "rb") as f:
            text = f.read().decode("utf-8-sig")
        renames = json.loads(text, object_pairs_hook=_no_duplicate_keys)
    except OSError as e:
        raise LabelNamesError(f"{path}: cannot be read ({e.strerror or e})") from None
    except UnicodeDecodeError:
        raise LabelNamesError(f"{path}: not UTF-8 text") from None
    except json.JSONDecodeError as e:
        raise LabelNamesError(f"{path}: not valid JSON ({e.msg} at line {e.lineno}, column {e.colno})") from None
    except LabelNamesError as e:
        raise LabelNamesError(f"{path}: {e}") from None
    if not isinstance(renames, dict):
        raise LabelNamesError(f'{path}: must be one JSON object {{"old label": "new label", ...}}, '
                              f"not a JSON {type(renames).__name__}")
    for old, new in renames.items():
        if not isinstance(new, str) or not new.strip():
            raise LabelNamesError(f"{path}: {old!r} maps to {json.dumps(new)}: a new label is a non-empty string")
        for name in (old, new):
            if name in RESERVED_LABELS:
                raise LabelNamesError(f"{path}: {old!r} -> {new!r}: LabelMe's {name} can be neither renamed "
                                      f"nor a new name")
    return renames


def first_few(items):
    """``a, b, c, d and 3 more``: items of a one-line message."""
    shown = ", ".join(items[:SHOWN_NAMES])
    return shown + (f" and {len(items) - SHOWN_NAMES} more" if len(items) > SHOWN_NAMES else "")


def quoted_names(names):
    """``'a', 'b', 'c', 'd' and 3 more``."""
    return first_few([repr(n) for n in names])


class ClassNaming:
    """The class each label becomes (rules in the module docstring). ``instances_per_image``: one
    mapping label -> instances per image, labels as written, ignored regions left out."""

    def __init__(self, instances_per_image, label_map=None, merge_numbered=False):
        instances_per_image = list(instances_per_image)
        self.label_map = dict(label_map or {})
        self.merge_numbered = merge_numbered
        self.numbered = numbered_groups(instances_per_image, exclude=self.label_map)
        self.written = sorted(set().union(*instances_per_image)) if instances_per_image else []
        stem_of = {label: g.stem for g in self.numbered for label in g.labels} if merge_numbered else {}
        self.renamed = {}  # label as written -> its class, for the labels that change
        for label in self.written:
            if label in self.label_map:
                name = self.label_map[label]
            elif label in stem_of:
                name = self.label_map.get(stem_of[label], stem_of[label])
            else:
                name = label
            if name != label:
                self.renamed[label] = name
        merged_stems = set(stem_of.values())
        self.unused_map_labels = sorted(k for k in self.label_map if k not in self.written and k not in merged_stems)

    def class_of(self, label):
        return self.renamed.get(label, label)

    def classes(self):
        return {self.class_of(label) for label in self.written}

    def check_labels(self, labels):
        """Raise :class:`LabelNamesError` when the class list ``labels`` (``--labels``) names labels that
        the renaming turns into other classes: it lists the names after renaming."""
        classes = self.classes()
        stale = defaultdict(list)  # new name -> the old names listed
        for name in labels:
            if name in self.renamed and name not in classes:
                stale[self.renamed[name]].append(name)
        if stale:
            what = "; ".join(f"{quoted_names(old)} -> {new!r}" for new, old in sorted(stale.items()))
            raise LabelNamesError(f"lists labels as written, not the class names after renaming: {what}")

    def summary_lines(self):
        """One line per numbered group (flagged, or merged with ``merge_numbered``), one for the map."""
        lines = []
        for group in self.numbered:
            if self.merge_numbered:
                merged_into = self.class_of(group.labels[0])
                lines.append(f'merged numbered labels: {group.describe()} -> one class "{merged_into}"')
            else:
                lines.append(f"labels look numbered per instance: {group.describe()} -> rerun with --merge-numbered "
                             f'to make them one class "{group.stem}"')
        if self.merge_numbered and not self.numbered:
            lines.append("--merge-numbered: no labels look numbered per instance, nothing merged")
        mapped = [f"{old} -> {new}" for old, new in self.renamed.items() if old in self.label_map]
        if mapped:
            lines.append(f"--label-map renamed {len(mapped)} label(s): {first_few(mapped)}")
        return lines
