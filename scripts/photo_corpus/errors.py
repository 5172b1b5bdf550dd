"""The errors of the corpus builder: one base class, one subclass per way a step fails."""


class CorpusError(Exception):
    """Base class of the corpus builder's errors."""


class ForbiddenPackageError(CorpusError):
    """A package that must never feed the corpus (see FORBIDDEN_PACKAGE_PREFIXES) was asked for."""


class FetchError(CorpusError):
    """A package could not be downloaded or unpacked."""


class RccError(CorpusError):
    """Bytes that are not a readable Qt resource (.rcc) file, or an entry that cannot be extracted."""


class UnreadableImageError(CorpusError):
    """A candidate that is missing, not an image, or does not decode completely."""
