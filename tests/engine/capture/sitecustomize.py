"""Test helper for ``tests/engine/test_evaluation_flower.py``, not part of fedshield.

Python imports ``sitecustomize`` at start-up from its path; the test puts this folder first
on ``PYTHONPATH`` and names a folder in ``FEDSHIELD_CAPTURE``. In a Flower site process (the
only one that calls :func:`fedshield.engine.flower.relay.serve`), it then records every reply
the site sends towards the server (``<site pid>-<n>-<kind>.bin``) and, as the test's oracle,
the labels and probabilities each evaluation computed (``<pid>-<n>-predictions.npz``). Every
other process (SuperLink, SuperNodes, the apps) only imports the light relay module.
"""

import itertools
import os

_FOLDER = os.environ.get("FEDSHIELD_CAPTURE")

if _FOLDER:
    from fedshield.engine.flower import relay

    _serve, _count = relay.serve, itertools.count()

    def _path(kind: str, suffix: str) -> str:
        name = f"{os.getpid()}-{next(_count):04d}-{kind.replace(':', '_')}{suffix}"
        return os.path.join(_FOLDER, name)

    def _record_predictions() -> None:
        import numpy as np

        from fedshield.engine.site import SiteRuntime

        predict = SiteRuntime.predict

        def recorded(self, vector):
            result = predict(self, vector)
            if isinstance(result, tuple):
                labels, probs, _loss = result
                np.savez(_path("evaluate", "-predictions.npz"), labels=labels, probs=probs)
            return result

        SiteRuntime.predict = recorded

    def serve(address, key, handler, **kwargs):
        """The relay's ``serve``, with ``handler``'s replies written to the folder."""
        _record_predictions()

        def recording(kind: str, payload: bytes):
            reply = handler(kind, payload)
            with open(_path(kind, ".bin"), "wb") as f:
                f.write(reply or b"")
            return reply

        return _serve(address, key, recording, **kwargs)

    relay.serve = serve
