import pickle

import pytest

from sidecar.proto.secret import Secret


def test_secret_never_shows_in_text() -> None:
    s = Secret("hunter2-password")
    for text in (
        repr(s),
        str(s),
        f"{s}",
        f"{s!r}",
        "%s" % s,  # noqa: UP031
        repr([s]),
        repr({"p": s}),
    ):
        assert "hunter2" not in text
    assert s.reveal() == "hunter2-password"


def test_secret_refuses_pickle() -> None:
    with pytest.raises(TypeError):
        pickle.dumps(Secret("x"))
