"""Every parser of a file a user may have downloaded, fed hostile bytes (hypothesis, and mutated real
files): each returns a well-formed result or raises a one-line UserError (the CLI's exit 2); none
raises anything else, and memory stays bounded. Fast in `make test`; the `_slow` twins run
SLOW_EXAMPLES cases each (docs/security.md records a run)."""

from __future__ import annotations

import gzip
import io
import json
import pickle
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import strategies as st

from sslkit.config import compose, config_from_text, to_yaml
from sslkit.data import cifar, idx, stl10
from sslkit.data.imagefolder import ImageFolderDataset, decode
from sslkit.engine import checkpoint as ckpt
from sslkit.errors import ConfigError, DataError
from sslkit.evaluation.detection.data import CocoDataset, read_voc_xml, voc_target
from sslkit.evaluation.features import check_cached
from sslkit.files import read_metrics, save_atomic
from tests.idx_files import idx_bytes
from tests.security.fuzz import fuzz, peak_memory, user_error_or

# --- IDX -------------------------------------------------------------------------------------------

IDX_DTYPES = {0x08: 1, 0x09: 1, 0x0B: 2, 0x0C: 4, 0x0D: 4, 0x0E: 8}
header = st.tuples(st.sampled_from([*IDX_DTYPES, 0x00, 0x07, 0xFF]), st.integers(0, 6),
                   st.lists(st.one_of(st.integers(0, 40), st.integers(0, 2**32 - 1)), max_size=6))


def _idx_file(tmp: Path, dtype: int, ndim: int, dims: list[int], body: bytes, gz: bool, zero: int = 0) -> Path:
    raw = struct.pack(">HBB", zero, dtype, ndim) + b"".join(struct.pack(">I", d) for d in dims) + body
    path = tmp / ("f.idx.gz" if gz else "f.idx")
    path.write_bytes(gzip.compress(raw) if gz else raw)
    return path


def check_idx(tmp_path_factory, head, body, gz):
    dtype, ndim, dims = head
    path = _idx_file(tmp_path_factory.mktemp("idx"), dtype, ndim, dims, body, gz)
    with peak_memory(48):  # one read chunk (16 MB) at most, whatever the header claims
        arr = user_error_or(lambda: idx.read_idx(path))
    if arr is not None:  # the header's dims are the first 4 * ndim bytes after the magic, whatever `dims` held
        rest = b"".join(struct.pack(">I", d) for d in dims) + body
        assert arr.shape == struct.unpack(f">{ndim}I", rest[:4 * ndim]) and arr.nbytes == len(rest) - 4 * ndim


test_idx_headers, test_idx_headers_slow = fuzz(header, st.binary(max_size=300), st.booleans())(check_idx)


def check_idx_mutation(tmp_path_factory, cut, flips):
    """A real (small) IDX .gz, truncated and bit-flipped: the gzip stream itself is damaged."""
    good = gzip.compress(idx_bytes(np.arange(4 * 28 * 28, dtype=np.uint8).reshape(4, 28, 28) % 251))
    data = bytearray(good[:cut] if cut < len(good) else good)
    for pos, bit in flips:
        if data:
            data[pos % len(data)] ^= 1 << bit
    path = tmp_path_factory.mktemp("idxm") / "train-images-idx3-ubyte.gz"
    path.write_bytes(bytes(data))
    with peak_memory(48):  # one read chunk (16 MB) at most, whatever the header claims
        arr = user_error_or(lambda: idx.read_idx(path))
    assert arr is None or arr.size == arr.shape[0] * int(np.prod(arr.shape[1:]))


test_idx_mutated, test_idx_mutated_slow = fuzz(
    st.integers(0, 2000), st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 7)), max_size=4))(check_idx_mutation)


def test_idx_absurd_dimensions_refused_before_reading(tmp_path):
    path = _idx_file(tmp_path, 0x0E, 3, [2**32 - 1, 2**32 - 1, 2**32 - 1], b"", gz=False)
    with pytest.raises(DataError, match="over the 2 GiB limit"):
        idx.read_idx(path)


def test_idx_gzip_bomb_reads_no_more_than_the_header_claims(tmp_path, monkeypatch):
    """A .gz of 64 MB of zeros (64 KB on disk) whose header claims 1 KB: reading stops at 1 KB + 1."""
    raw = struct.pack(">HBB", 0, 0x08, 1) + struct.pack(">I", 1024) + bytes(64 << 20)
    path = tmp_path / "bomb.gz"
    path.write_bytes(gzip.compress(raw, compresslevel=1))
    assert path.stat().st_size < 1 << 20
    with peak_memory(24), pytest.raises(DataError, match="has more"):
        idx.read_idx(path)
    monkeypatch.setattr(idx, "MAX_IDX_BYTES", 1 << 20)  # and a claim over the limit is never read at all
    path.write_bytes(gzip.compress(struct.pack(">HBBI", 0, 0x08, 1, 64 << 20) + bytes(64 << 20), compresslevel=1))
    with peak_memory(1), pytest.raises(DataError, match="limit"):
        idx.read_idx(path)


# --- CIFAR pickles ---------------------------------------------------------------------------------

def _cifar_pickle(n: int = 2) -> bytes:
    rng = np.random.default_rng(0)
    return pickle.dumps({b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), b"labels": list(range(n))},
                        protocol=2)


def check_cifar(tmp_path_factory, cut, flips, raw):
    data = bytearray(raw if raw is not None else _cifar_pickle()[:cut])
    for pos, byte in flips:
        if data:
            data[pos % len(data)] = byte
    path = tmp_path_factory.mktemp("cifar") / "data_batch_1"
    path.write_bytes(bytes(data))
    with peak_memory(64):
        out = user_error_or(lambda: cifar.read_batch(path, b"labels", 10))
    if out is not None:
        images, labels = out
        assert images.shape[1:] == (3072,) and labels.shape == (len(images),) and labels.max(initial=0) < 10


test_cifar_pickles, test_cifar_pickles_slow = fuzz(
    st.integers(0, 7000), st.lists(st.tuples(st.integers(0, 10**5), st.integers(0, 255)), max_size=6),
    st.one_of(st.none(), st.binary(max_size=200)))(check_cifar)


def test_cifar_pickle_that_claims_gigabytes_allocates_nothing(tmp_path):
    """BINBYTES8 with a length of 2**40: read from memory, the unpickler finds the data short."""
    path = tmp_path / "data_batch_1"
    path.write_bytes(b"\x80\x04\x8e" + struct.pack("<Q", 1 << 40) + b"xx")
    with peak_memory(8), pytest.raises(DataError, match="not a valid CIFAR pickle"):
        cifar.read_batch(path, b"labels", 10)


def test_cifar_pickle_cannot_run_code(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    path = tmp_path / "data_batch_1"
    path.write_bytes(pickle.dumps({b"data": Evil()}, protocol=2))
    with pytest.raises(DataError, match="refusing to load global .*print"):
        cifar.read_batch(path, b"labels", 10)


# --- STL-10 binaries -------------------------------------------------------------------------------

def check_stl10(tmp_path_factory, n_bytes, labels):
    tmp = tmp_path_factory.mktemp("stl")
    (tmp / "train_X.bin").write_bytes(bytes(n_bytes))
    (tmp / "train_y.bin").write_bytes(bytes(labels))

    def read():
        n = stl10.count_images(tmp / "train_X.bin")
        return n, stl10.read_labels(tmp / "train_y.bin", n)

    out = user_error_or(read)
    if out is not None:
        n, y = out
        assert len(y) == n and y.min() >= 0 and y.max() <= 9


test_stl10_files, test_stl10_files_slow = fuzz(
    st.sampled_from([0, 1, 27648, 27649, 2 * 27648]), st.lists(st.integers(0, 255), max_size=3))(check_stl10)


# --- images ----------------------------------------------------------------------------------------

def _png(width: int, height: int, idat: bytes) -> bytes:
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def _real_png() -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (16, 12), (10, 200, 30)).save(buf, format="PNG")
    return buf.getvalue()


def check_image(tmp_path_factory, suffix, data, flips):
    data = bytearray(data if data is not None else _real_png())
    for pos, byte in flips:
        if data:
            data[pos % len(data)] = byte
    path = tmp_path_factory.mktemp("img") / f"x{suffix}"
    path.write_bytes(bytes(data))
    from PIL import Image

    # a header may claim up to MAX_IMAGE_PIXELS (89.5 M) pixels and decode: RGB bytes from PIL and their numpy
    # copy, 2 x 3 bytes a pixel, are the bound (about 512 MiB)
    with peak_memory(6 * Image.MAX_IMAGE_PIXELS / 2**20 + 64):
        img = user_error_or(lambda: decode(str(path)))
    assert img is None or (img.ndim == 3 and img.shape[0] == 3 and img.dtype == torch.uint8)


test_images, test_images_slow = fuzz(
    st.sampled_from([".png", ".jpg", ".gif", ".bmp", ".webp"]), st.one_of(st.none(), st.binary(max_size=400)),
    st.lists(st.tuples(st.integers(0, 10**4), st.integers(0, 255)), max_size=4))(check_image)


def test_image_bomb_is_a_counted_skip_not_a_decode(tmp_path, capsys):
    """A 60 KB PNG that claims 100000 x 100000 pixels (30 GB decoded) is refused from its header; in a
    dataset it is skipped, warned about once and counted."""
    bomb = _png(100_000, 100_000, zlib.compress(bytes(1 << 20), 9))
    (tmp_path / "bomb.png").write_bytes(bomb)
    good = tmp_path / "good.png"
    good.write_bytes(_real_png())
    (tmp_path / "big.png").write_bytes(_png(10_000, 10_000, zlib.compress(bytes(1 << 20), 9)))  # 1x-2x the limit
    for name in ("bomb.png", "big.png"):
        with peak_memory(32), pytest.raises(DataError, match="decompression bomb"):
            decode(str(tmp_path / name))
    ds = ImageFolderDataset([str(tmp_path / "bomb.png"), str(good)], torch.tensor([0, 0]), ["a"], 8,
                            max_bad_fraction=0.5)
    img, _ = ds[0]
    assert img.shape == (3, 8, 8) and ds.bad_count() == 1
    assert "skipping unreadable image" in capsys.readouterr().err


# --- VOC XML ---------------------------------------------------------------------------------------

VOC = """<annotation><filename>1.jpg</filename><size><width>10</width><height>10</height></size>
<object><name>{name}</name><difficult>{difficult}</difficult>
<bndbox><xmin>{x}</xmin><ymin>1</ymin><xmax>5</xmax><ymax>6</ymax></bndbox></object></annotation>"""


def _laughs(depth: int) -> str:
    ents = ['<!ENTITY l0 "lol">'] + [f'<!ENTITY l{i} "{("&l" + str(i - 1) + ";") * 10}">' for i in range(1, depth)]
    return f'<?xml version="1.0"?><!DOCTYPE a [{"".join(ents)}]><annotation>&l{depth - 1};</annotation>'


EXTERNAL = '<?xml version="1.0"?><!DOCTYPE a [<!ENTITY x SYSTEM "file:///etc/passwd">]><annotation>&x;</annotation>'


def check_voc(tmp_path_factory, text):
    path = tmp_path_factory.mktemp("voc") / "1.xml"
    path.write_text(text)
    with peak_memory(16):
        parsed = user_error_or(lambda: read_voc_xml(path))
        if parsed is not None:
            user_error_or(lambda: voc_target(parsed))


xml_values = st.one_of(st.sampled_from(["dog", "cat", "", "<x/>", "&amp;", "1e309", "nan"]), st.text(max_size=8))
test_voc_xml, test_voc_xml_slow = fuzz(st.one_of(
    st.builds(lambda n, d, x: VOC.format(name=n, difficult=d, x=x), xml_values, xml_values, xml_values),
    st.integers(2, 12).map(_laughs), st.just(EXTERNAL), st.text(max_size=200),
    st.builds(lambda s, k: s[:k], st.just(VOC.format(name="dog", difficult=0, x=1)), st.integers(0, 300))))(check_voc)


def test_voc_billion_laughs_and_external_entities_are_refused(tmp_path):
    for text in (_laughs(10), EXTERNAL):  # 10**9 "lol"s; /etc/passwd
        path = tmp_path / "1.xml"
        path.write_text(text)
        with peak_memory(4), pytest.raises(DataError, match="DTDForbidden"):
            read_voc_xml(path)


# --- COCO JSON -------------------------------------------------------------------------------------

json_leaf = st.one_of(st.none(), st.booleans(), st.integers(-3, 3), st.floats(allow_nan=True), st.text(max_size=4))
json_any = st.recursive(json_leaf, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                           st.dictionaries(st.text(max_size=4), inner, max_size=3)),
                        max_leaves=10)
coco_image = st.fixed_dictionaries({"id": st.one_of(st.just(1), json_any),
                                    "file_name": st.one_of(st.just("a.png"), st.just("../x.png"),
                                                           st.just("/etc/passwd"), json_any)})
coco_ann = st.fixed_dictionaries({"id": st.one_of(st.just(1), json_any), "image_id": st.one_of(st.just(1), json_any),
                                  "category_id": st.one_of(st.just(1), json_any),
                                  "bbox": st.one_of(st.just([0, 0, 2, 2]), st.lists(json_leaf, max_size=5), json_any),
                                  "iscrowd": st.one_of(st.just(0), json_any)})
coco_cat = st.fixed_dictionaries({"id": st.one_of(st.just(1), json_any), "name": json_any})
coco = st.one_of(json_any, st.fixed_dictionaries({
    "images": st.one_of(st.lists(coco_image, max_size=2), json_any),
    "annotations": st.one_of(st.lists(coco_ann, max_size=2), json_any),
    "categories": st.one_of(st.lists(coco_cat, max_size=2), json_any)}))


def check_coco(tmp_path_factory, doc):
    tmp = tmp_path_factory.mktemp("coco")
    (tmp / "img").mkdir()
    (tmp / "ann.json").write_text(json.dumps(doc))
    ds = user_error_or(lambda: CocoDataset(str(tmp / "ann.json"), str(tmp / "img"), train=False))
    if ds is not None:
        for i in range(len(ds)):
            boxes, labels, _ = ds.target(i)
            assert all(1 <= label <= ds.num_classes for label in labels) and len(boxes) == len(labels)
            assert ds.files[i].resolve().is_relative_to((tmp / "img").resolve())


test_coco_json, test_coco_json_slow = fuzz(coco)(check_coco)


@pytest.mark.parametrize("name", ["../outside.png", "/etc/passwd", "a/../../outside.png"])
def test_coco_file_names_stay_in_the_image_folder(tmp_path, name):
    (tmp_path / "img").mkdir()
    doc = {"images": [{"id": 1, "file_name": name}], "annotations": [],
           "categories": [{"id": 1, "name": "x"}]}
    (tmp_path / "ann.json").write_text(json.dumps(doc))
    with pytest.raises(DataError, match="points outside"):
        CocoDataset(str(tmp_path / "ann.json"), str(tmp_path / "img"), train=False)


# --- YAML configs (a checkpoint's config, a run's config.yaml) -------------------------------------

GOOD_YAML = to_yaml(compose(["method=mocov2"]))
yaml_hostile = st.sampled_from([
    "!!python/object/apply:os.system ['touch /tmp/sslkit-pwned']", "a: !!python/name:os.system",
    "a: &x [1, 2]\nb: *x", "a: ${oc.env:HOME}", "a: !custom 1", "- 1\n- 2", "a: [", "{{{{", "a: 1\na: 2",
    "a: " + "[" * 5000, "\x00\x01", "? [1, 2]\n: 3"])


def check_yaml(text, cut):
    cfg = user_error_or(lambda: config_from_text(text[:cut] if cut is not None else text, "fuzz"))
    assert cfg is None or hasattr(cfg, "keys")


test_yaml_configs, test_yaml_configs_slow = fuzz(
    st.one_of(yaml_hostile, st.text(max_size=120), st.just(GOOD_YAML),
              st.builds(lambda h: GOOD_YAML + "\n" + h, yaml_hostile)),
    st.one_of(st.none(), st.integers(0, len(GOOD_YAML))))(check_yaml)


def test_a_checkpoint_config_with_a_python_tag_is_one_line_exit_2(tmp_path, capsys):
    from sslkit.app.cli import main

    file = tmp_path / "evil.pt"
    save_atomic({"format": ckpt.FORMAT, "version": ckpt.VERSION, "method": {},
                 "config": "!!python/object/apply:os.system ['touch " + str(tmp_path / "pwned") + "']"}, file)
    for argv in (["eval", "knn", f"checkpoint={file}"], ["export", f"checkpoint={file}", f"out={tmp_path / 'b.pt'}"],
                 ["train", f"trainer.resume={file}"]):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "holds a YAML tag" in err[0], err
    assert not (tmp_path / "pwned").exists()


# --- checkpoints -----------------------------------------------------------------------------------

def check_checkpoint(tmp_path_factory, cut, flips):
    tmp = tmp_path_factory.mktemp("ckpt")
    file = tmp / "c.pt"
    save_atomic({"format": ckpt.FORMAT, "version": ckpt.VERSION, "config": GOOD_YAML,
                 "method": {"backbone.w": torch.ones(3)}}, file)
    data = bytearray(file.read_bytes())
    data = data[:cut] if cut is not None else data
    for pos, byte in flips:
        if data:
            data[pos % len(data)] = byte
    file.write_bytes(bytes(data))
    state = user_error_or(lambda: ckpt.load(file))
    if state is not None:
        user_error_or(lambda: ckpt.config_of(state))


test_checkpoints, test_checkpoints_slow = fuzz(
    st.one_of(st.none(), st.integers(0, 3000)),
    st.lists(st.tuples(st.integers(0, 10**5), st.integers(0, 255)), max_size=3))(check_checkpoint)


# --- metrics.jsonl ---------------------------------------------------------------------------------

def check_metrics(tmp_path_factory, lines):
    run = tmp_path_factory.mktemp("run")
    (run / "metrics.jsonl").write_bytes(b"\n".join(lines))
    records = read_metrics(run)
    assert all(isinstance(r, dict) for r in records)
    from sslkit.evaluation.plots import _series

    for key in ("loss", "knn_top1"):
        _series(records, key, "epoch" if key == "knn_top1" else "step")  # sorts: mixed types would raise


metric_line = st.one_of(
    st.builds(lambda v: json.dumps(v).encode(), json_any),
    st.builds(lambda s, v: json.dumps({"step": s, "loss": v}).encode(), json_any, json_any),
    st.builds(lambda s, k: json.dumps({"step": s, "loss": 1.0})[:k].encode(), st.integers(0, 9), st.integers(0, 20)),
    st.binary(max_size=20), st.just(b"[" * 100_000))
test_metrics_jsonl, test_metrics_jsonl_slow = fuzz(st.lists(metric_line, max_size=6))(check_metrics)


def test_a_torn_metrics_file_still_plots_and_reports(tmp_path):
    from sslkit.evaluation.report import build_report

    (tmp_path / "metrics.jsonl").write_bytes(b'{"step": 1, "loss": 2.0}\n{"step": "x", "loss": 1}\n[1]\n'
                                             b'{"step": 2, "loss": "nan"}\n\xff\xfe\n' + b"[" * 100_000 + b'\n{"st')
    page, _ = build_report(tmp_path)
    assert (tmp_path / "training.png").is_file() and "Training" in page
    assert read_metrics(tmp_path) == [{"step": 1, "loss": 2.0}, {"step": 2, "loss": "nan"}]


# --- the feature cache -----------------------------------------------------------------------------

tensor = st.builds(lambda shape, dtype: torch.zeros(shape, dtype=dtype),
                   st.lists(st.integers(0, 4), max_size=3), st.sampled_from([torch.float32, torch.int64, torch.uint8]))


def check_cache_blob(blob):
    try:
        feats, labels, num_classes = check_cached(blob)
    except ValueError:
        return
    assert feats.ndim == 2 and labels.shape == (len(feats),) and num_classes > 0


test_cache_blobs, test_cache_blobs_slow = fuzz(st.one_of(
    json_any, st.fixed_dictionaries({"feats": st.one_of(tensor, json_any), "labels": st.one_of(tensor, json_any),
                                     "num_classes": st.one_of(st.integers(-2, 12), json_any)})))(check_cache_blob)


def test_a_cache_file_of_the_wrong_shape_is_recomputed(tmp_path, capsys):
    from sslkit.evaluation.features import cache_key, load_features
    from tests.idx_files import write_idx_dataset

    write_idx_dataset(tmp_path / "d", n_train=20, n_test=10)
    data = {"name": "fashion_mnist", "root": str(tmp_path / "d"), "image_size": 28, "subset_seed": 0}
    first = load_features("pixels", "test", None, data, cache_dir=tmp_path / "cache")
    path = tmp_path / "cache" / f"{cache_key('pixels', 'test', None, data, None)}.pt"
    assert first.path == path and path.is_file()
    save_atomic({"feats": torch.zeros(3, 4, 5), "labels": torch.zeros(7), "num_classes": "ten"}, path)
    again = load_features("pixels", "test", None, data, cache_dir=tmp_path / "cache")
    assert not again.cached and torch.equal(again.feats, first.feats) and torch.equal(again.labels, first.labels)
    assert "recomputing the damaged feature cache" in capsys.readouterr().err


def test_the_png_that_crashed_torchvision_is_a_one_line_error(tmp_path):
    """An 80-byte corrupt PNG (found by test_images_slow) on which torchvision.io.decode_image segfaulted
    the process; PNGs are decoded by PIL, which raises."""
    crash = Path(__file__).with_name("crash.png")
    with pytest.raises(DataError, match="cannot decode image"):
        decode(str(crash))
    as_jpg = tmp_path / "crash.jpg"  # decode_image sniffs the content: the name must not pick the decoder
    as_jpg.write_bytes(crash.read_bytes())
    with pytest.raises(DataError, match="cannot decode image"):
        decode(str(as_jpg))


def test_a_cifar_label_too_large_for_int64_is_one_line(tmp_path):
    path = tmp_path / "data_batch_1"
    path.write_bytes(pickle.dumps({b"data": np.zeros((1, 3072), np.uint8), b"labels": [2**70]}, protocol=2))
    with pytest.raises(DataError, match="not a valid CIFAR batch"):
        cifar.read_batch(path, b"labels", 10)


def test_cases_the_slow_run_found(tmp_path):
    """Each was a traceback or an unbounded allocation before its fix (docs/security.md)."""
    path = tmp_path / "data_batch_1"
    path.write_bytes(b"B\x00\x00\x00\x04")  # BINBYTES claiming 64 MiB in a 5-byte file
    with peak_memory(8), pytest.raises(DataError, match="not a valid CIFAR pickle"):
        cifar.read_batch(path, b"labels", 10)
    with pytest.raises(ConfigError, match="is a int, not a mapping"):
        config_from_text("0", "fuzz")  # OmegaConf.create("0") raised a bare AssertionError
    xml = tmp_path / "1.xml"
    xml.write_text(VOC.format(name="0\n0", difficult=0, x=1))
    with pytest.raises(DataError) as caught:
        voc_target(read_voc_xml(xml))
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize("method", ["mocov1", "mocov2", "simclr"])
def test_a_config_sslkit_wrote_reads_back_unchanged(method):
    """The restrictions take nothing from a real config: every value comes back with its type (1e-3 a float)."""
    from omegaconf import OmegaConf

    cfg = compose([f"method={method}", "optim.weight_decay=1e-3"])
    back = config_from_text(to_yaml(cfg), "test")
    assert OmegaConf.to_container(back) == OmegaConf.to_container(cfg)
    assert back.optim.weight_decay == 1e-3
