"""pipenmt: model-parallel GNMT. The Python API is :mod:`nmt.translator`
(``from nmt.translator import Translator``)."""
