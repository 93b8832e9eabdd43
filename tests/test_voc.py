"""Pascal VOC detection loader, augmentation and grid targets (codegen/frontend/voc.py).

Tiny VOC folders of 32x24 images are built in tmp_path; one test reads the real BCCD test split.
"""
import hashlib

import numpy as np
import pytest
import torch
from PIL import Image

from codegen.frontend import voc
from codegen.frontend.datasets import data_root
from runtime.errors import UserError

W0, H0 = 32, 24


def _xml(filename, objects, size=(W0, H0)):
    objs = "".join(
        f"<object><name>{n}</name><bndbox><xmin>{b[0]}</xmin><ymin>{b[1]}</ymin>"
        f"<xmax>{b[2]}</xmax><ymax>{b[3]}</ymax></bndbox></object>" for n, b in objects)
    fn = f"<filename>{filename}</filename>" if filename else ""
    return (f"<annotation>{fn}<size><width>{size[0]}</width><height>{size[1]}</height>"
            f"<depth>3</depth></size>{objs}</annotation>")


def _image(seed, mode="RGB"):
    rng = np.random.default_rng(seed)
    if mode == "L":
        return Image.fromarray(rng.integers(0, 256, (H0, W0), dtype=np.uint8), "L")
    return Image.fromarray(rng.integers(0, 256, (H0, W0, 3), dtype=np.uint8), "RGB")


def make_voc(root, items, splits=None, ann="Annotations", img="JPEGImages"):
    """items: {id: [(class, (x0, y0, x1, y1)), ...]}; ids ending in 'j' are JPEG, else PNG."""
    (root / ann).mkdir(parents=True)
    (root / img).mkdir()
    for k, (ident, objects) in enumerate(items.items()):
        fn = f"{ident}.jpg" if ident.endswith("j") else f"{ident}.png"
        _image(k).save(root / img / fn)
        (root / ann / f"{ident}.xml").write_text(_xml(fn, objects))
    if splits is not None:
        (root / "ImageSets" / "Main").mkdir(parents=True)
        for split, ids in splits.items():
            (root / "ImageSets" / "Main" / f"{split}.txt").write_text("".join(i + "\n" for i in ids))
    return f"voc:{root}"


ITEMS = {
    "b": [("dog", (4, 2, 20, 14)), ("cat", (0, 0, 32, 24))],
    "aj": [("cat", (8, 6, 16, 18)), ("cat", (5, 5, 5, 9)), ("dog", (1, 1, 3, 1))],  # two zero-area boxes
    "c": [],
}
SPLITS = {"train": ["b", "aj"], "val": ["c"], "test": ["c"]}


def test_load_scales_boxes_and_keeps_split_order(tmp_path):
    name = make_voc(tmp_path, ITEMS, SPLITS)
    assert voc.is_detection_dataset(name) and voc.is_detection_dataset("bccd") and voc.is_detection_dataset("raccoon")
    assert not voc.is_detection_dataset("mnist")
    assert voc.canonical(name) == f"voc:{tmp_path.resolve()}" and voc.canonical("BCCD") == "bccd"
    d = voc.load(name, "train", (64, 12))
    assert d.name == voc.canonical(name) and d.split == "train"
    assert d.classes == ["cat", "dog"]                      # sorted names of the whole folder
    assert d.ids == ["b", "aj"]                             # split-file order, not sorted
    assert d.images.dtype == np.uint8 and d.images.shape == (2, 3, 12, 64)
    assert d.orig_sizes == [(32, 24), (32, 24)]
    assert d.dropped == 2
    np.testing.assert_array_equal(d.boxes[0], [[8, 1, 40, 7], [0, 0, 64, 12]])   # x * 2, y * 0.5
    np.testing.assert_array_equal(d.boxes[1], [[16, 3, 32, 9]])
    assert d.boxes[0].dtype == np.float64 and d.labels[0].dtype == np.int64
    np.testing.assert_array_equal(d.labels[0], [1, 0])
    np.testing.assert_array_equal(d.labels[1], [0])
    # pixels are Pillow's bilinear resize of the RGB image
    want = np.asarray(Image.open(tmp_path / "JPEGImages" / "b.png").convert("RGB").resize((64, 12), Image.Resampling.BILINEAR))
    np.testing.assert_array_equal(d.images[0], want.transpose(2, 0, 1))
    # an image without objects, given classes, one channel
    e = voc.load(name, "val", (8, 8), channels=1, classes=["dog", "cat"])
    assert e.images.shape == (1, 1, 8, 8) and e.boxes[0].shape == (0, 4) and e.labels[0].shape == (0,)
    assert e.classes == ["dog", "cat"]
    assert voc.load(name, "train", (64, 12), classes=["dog", "cat"]).labels[0].tolist() == [0, 1]


def _rewrite(path, objects, **kw):
    path.write_text(_xml(path.stem + ".png", objects, **kw))


BAD = {
    "missing image": (lambda r: (r / "JPEGImages" / "b.png").unlink(), r"image file not found: .*b\.png"),
    "missing annotation": (lambda r: (r / "Annotations" / "b.xml").unlink(), r"annotation file not found: .*b\.xml"),
    "box outside": (lambda r: _rewrite(r / "Annotations" / "b.xml", [("dog", (4, 2, 33, 14))]),
                    r"b\.xml: box 1 \(dog\) 4,2,33,14 lies outside the 32x24 image"),
    "negative box": (lambda r: _rewrite(r / "Annotations" / "b.xml", [("dog", (-1, 2, 3, 14))]), r"b\.xml: .*outside"),
    "inverted box": (lambda r: _rewrite(r / "Annotations" / "b.xml", [("cat", (1, 1, 2, 2)), ("dog", (20, 2, 10, 14))]),
                     r"b\.xml: box 2 \(dog\) 20,2,10,14 is inverted"),
    "unknown class": (lambda r: _rewrite(r / "Annotations" / "b.xml", [("cow", (4, 2, 20, 14))]), None),
    "unparsable xml": (lambda r: (r / "Annotations" / "b.xml").write_text("<annotation><size>"), r"b\.xml: XML does not parse"),
    "no size": (lambda r: (r / "Annotations" / "b.xml").write_text("<annotation><object/></annotation>"), r"b\.xml: .*no <size>"),
    "no bndbox field": (lambda r: (r / "Annotations" / "b.xml").write_text(
        _xml("b.png", [("dog", (1, 2, 3, 4))]).replace("<ymax>4</ymax>", "")), r"b\.xml: box 1 \(dog\) has no <ymax>"),
    "non-numeric": (lambda r: (r / "Annotations" / "b.xml").write_text(
        _xml("b.png", [("dog", (1, 2, 3, 4))]).replace("<xmin>1<", "<xmin>one<")), r"b\.xml: box 1 \(dog\) xmin is not a number"),
    "size mismatch": (lambda r: _rewrite(r / "Annotations" / "b.xml", [("dog", (4, 2, 20, 14))], size=(40, 30)),
                      r"b\.xml: size 40x30 differs from the 32x24 image .*b\.png"),
    "unreadable image": (lambda r: (r / "JPEGImages" / "b.png").write_bytes(b"not a png"), r"b\.png: Pillow cannot read"),
    "empty split": (lambda r: (r / "ImageSets" / "Main" / "train.txt").write_text("\n"), r"train\.txt: split 'train' lists no images"),
    "split list missing": (lambda r: (r / "ImageSets" / "Main" / "train.txt").unlink(), r"split list not found: .*train\.txt"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_data_one_line_error_naming_the_file(tmp_path, case):
    name = make_voc(tmp_path, {"b": ITEMS["b"], "aj": ITEMS["aj"]}, SPLITS)
    mutate, match = BAD[case]
    mutate(tmp_path)
    kw = {}
    if case == "unknown class":
        kw["classes"] = ["cat", "dog"]
        match = r"b\.xml: box 1 has unknown class 'cow'"
    with pytest.raises(UserError, match=match) as info:
        voc.load(name, "train", (16, 16), **kw)
    assert "\n" not in str(info.value)


def test_bad_options(tmp_path):
    name = make_voc(tmp_path, {"b": ITEMS["b"]}, {"train": ["b"]})
    for size in [(7, 16), (16, 1025), (16.0, 16), (16,), "16x16"]:
        with pytest.raises(UserError, match="^size must be two integers"):
            voc.load(name, "train", size)
    with pytest.raises(UserError, match="^channels must be 1 or 3"):
        voc.load(name, "train", (16, 16), channels=2)
    with pytest.raises(UserError, match="^split must be one of train, val, test, not 'trainval'"):
        voc.load(name, "trainval", (16, 16))
    with pytest.raises(UserError, match="^unknown detection dataset 'coco'"):
        voc.load("coco", "train", (16, 16))
    with pytest.raises(UserError, match="dataset folder not found: .*nowhere"):
        voc.load(f"voc:{tmp_path / 'nowhere'}", "train", (16, 16))


def test_deterministic_split_without_imagesets(tmp_path):
    ids = [f"im{k:02d}" for k in range(40)]
    name = make_voc(tmp_path, {i: [("x", (1, 1, 9, 9))] for i in ids})
    want = {s: [] for s in ("train", "val", "test")}
    for i in sorted(ids):
        r = int(hashlib.sha256(i.encode()).hexdigest(), 16) % 10
        want["test" if r == 0 else "val" if r == 1 else "train"].append(i)
    assert all(want.values())
    for split, expect in want.items():
        assert voc.load(name, split, (8, 8)).ids == expect


def test_csv_layout_val_every_fifth_and_grayscale(tmp_path):
    """raccoon layout: annotations/, images/, data/{train,test}_labels.csv; a grayscale JPEG becomes RGB."""
    ids = [f"r-{k}" for k in range(7)]
    name = make_voc(tmp_path, {i: [("raccoon", (2, 2, 30, 20))] for i in ids}, ann="annotations", img="images")
    _image(99, "L").save(tmp_path / "images" / "r-3.png")
    (tmp_path / "data").mkdir()
    head = "filename,width,height,class,xmin,ymin,xmax,ymax\n"
    rows = lambda sel: "".join(f"{i}.png,32,24,raccoon,2,2,30,20\n" * 2 for i in sel)  # two rows per image
    train_list = ["r-6", "r-0", "r-5", "r-1", "r-4", "r-3"]
    (tmp_path / "data" / "train_labels.csv").write_text(head + rows(train_list))
    (tmp_path / "data" / "test_labels.csv").write_text(head + rows(["r-2"]))
    # sorted train ids r-0 r-1 r-3 r-4 r-5 r-6: every 5th from the first -> r-0, r-6
    assert voc.load(name, "val", (8, 8)).ids == ["r-6", "r-0"]
    tr = voc.load(name, "train", (8, 8))
    assert tr.ids == ["r-5", "r-1", "r-4", "r-3"]
    assert tr.images.shape == (4, 3, 8, 8)
    g = tr.images[3]
    assert (g[0] == g[1]).all() and (g[1] == g[2]).all()
    assert voc.load(name, "test", (8, 8)).ids == ["r-2"]


def test_augment_deterministic_and_hflip_exact():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(8, 3, 24, 32, generator=g)
    boxes = [np.array([[1.0, 2.0, 11.0, 20.0], [20.0, 4.0, 31.0, 9.0]]) for _ in range(8)]
    labels = [np.array([0, 1]) for _ in range(8)]
    run = lambda seed, **kw: voc.augment(x, boxes, labels, torch.Generator().manual_seed(seed), **kw)
    a, b = run(1), run(1)
    assert torch.equal(a[0], b[0]) and all((p == q).all() for p, q in zip(a[1] + a[2], b[1] + b[2]))
    assert not torch.equal(a[0], run(2)[0])
    assert a[0].dtype == torch.float32 and a[0].shape == x.shape and 0 <= a[0].min() and a[0].max() <= 1
    # flips only: each image is either untouched or exactly mirrored, and so are its boxes
    out, ob, ol = run(3, scale=(1.0, 1.0), brightness=0.0)
    flipped = 0
    for i in range(8):
        if torch.equal(out[i], x[i].flip(-1)):
            flipped += 1
            np.testing.assert_array_equal(ob[i], [[21, 2, 31, 20], [1, 4, 12, 9]])
        else:
            assert torch.equal(out[i], x[i])
            np.testing.assert_array_equal(ob[i], boxes[i])
        np.testing.assert_array_equal(ol[i], [0, 1])
    assert 0 < flipped < 8


def test_augment_zoom_moves_boxes_with_pixels():
    """A white rectangle on black: after a zoom its bright pixels lie where the box went."""
    x = torch.zeros(6, 1, 48, 64)
    x[:, :, 16:32, 20:44] = 1.0
    box = np.array([[20.0, 16.0, 44.0, 32.0]])
    out, ob, ol = voc.augment(x, [box] * 6, [np.array([0])] * 6, torch.Generator().manual_seed(5),
                              hflip=False, scale=(0.7, 1.4), brightness=0.0)
    for i in range(6):
        ys, xs = np.nonzero(out[i, 0].numpy() > 0.5)
        if len(ob[i]) == 0:
            continue
        x0, y0, x1, y1 = ob[i][0]
        assert abs(xs.min() - x0) <= 1 and abs(xs.max() + 1 - x1) <= 1
        assert abs(ys.min() - y0) <= 1 and abs(ys.max() + 1 - y1) <= 1
    # a box mostly pushed out of the image is dropped
    _, ob, ol = voc.augment(torch.zeros(1, 1, 24, 32), [np.array([[30.0, 0.0, 32.0, 24.0], [0.0, 0.0, 32.0, 24.0]])],
                            [np.array([4, 5])], torch.Generator().manual_seed(0), hflip=False, scale=(1.0, 1.0))
    assert ol[0].tolist() == [4, 5]           # no zoom: nothing dropped
    _, ob, ol = voc.augment(torch.zeros(1, 1, 24, 32), [np.array([[0.0, 0.0, 1.5, 24.0]])],
                            [np.array([4])], torch.Generator().manual_seed(0), hflip=False, scale=(1.0, 1.0))
    assert ol[0].shape == (0,) and ob[0].shape == (0, 4)   # under 2 px wide


def test_targets_hand_computed():
    boxes = np.array([
        [2, 2, 14, 14],    # A: centre (8, 8) -> cell (1, 1), area 144
        [9, 9, 13, 11],    # B: centre (11, 10) -> cell (1, 1), area 8: wins over A
        [0, 16, 8, 24],    # C: centre (4, 20) -> cell (2, 0), a neighbour of (1, 1) but a centre itself
        [24, 24, 32, 32],  # D: centre (28, 28) -> cell (3, 3), the corner
    ], dtype=np.float64)
    labels = np.array([0, 1, 2, 0])
    cls, box, mask = voc.targets(boxes, labels, (4, 4), 8)
    assert cls.dtype == np.int64 and box.dtype == np.float32 and mask.dtype == bool
    assert box.shape == (4, 4, 4)
    np.testing.assert_array_equal(cls, [
        [-1, -1, -1, 0],
        [-1, 2, -1, 0],
        [3, -1, -1, -1],
        [-1, -1, -1, 1],   # (3, 0), (3, 1) ring C; (2, 2), (2, 3), (3, 2) ring D
    ])
    np.testing.assert_array_equal(mask, cls > 0)
    np.testing.assert_allclose(box[:, 1, 1], [0.375, 0.25, 0.5, 0.25])
    np.testing.assert_allclose(box[:, 2, 0], [0.5, 0.5, 1.0, 1.0])
    np.testing.assert_allclose(box[:, 3, 3], [0.5, 0.5, 1.0, 1.0])
    assert (box[:, ~mask] == 0).all()
    # a tie in area: the first box wins; a centre on the far edge goes to the last cell
    cls, box, mask = voc.targets(np.array([[0, 0, 4, 4], [1, 1, 5, 5.0], [28, 0, 36, 2]]), np.array([5, 6, 7]), (2, 4), 8)
    assert cls[0, 0] == 6 and cls[0, 3] == 8 and box[0, 0, 3] == 1.0
    cls, box, mask = voc.targets(np.zeros((0, 4)), np.zeros(0, np.int64), (3, 2), 16)
    assert (cls == 0).all() and not mask.any() and (box == 0).all()


def test_bccd_test_split():
    if not (data_root() / "bccd").is_dir():
        pytest.skip(f"BCCD not found in {data_root()}")
    d = voc.load("bccd", "test", (64, 48))
    assert len(d.ids) == 72 and d.images.shape == (72, 3, 48, 64)
    assert d.classes == ["RBC", "WBC", "Platelets"]
    assert np.bincount(np.concatenate(d.labels), minlength=3).tolist() == [805, 71, 69]
    assert all(s == (640, 480) for s in d.orig_sizes)
    b = np.concatenate(d.boxes)
    assert (b[:, 0] >= 0).all() and (b[:, 2] <= 64).all() and (b[:, 3] <= 48).all()
