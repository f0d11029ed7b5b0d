"""The cluster-secret handshake (machida/wire/auth.py) and the secret file (cluster/secret.py)."""

from __future__ import annotations

import hashlib
import hmac
import os
import stat

import pytest
from hypothesis import given
from hypothesis import strategies as st

from machida.cluster.secret import SecretError, cluster_secret, default_path
from machida.console import error_line
from machida.wire.auth import CHALLENGE, MAGIC, RESPONSE, AcceptorHandshake, DiallerHandshake

SECRET = b"k" * 64


def run(acceptor: AcceptorHandshake, dialler: DiallerHandshake, step: int | None = None) -> None:
    """Carry the three messages between the two sides, ``step`` bytes at a time if given."""

    def carry(data: bytes, to) -> bytes:
        if step is None:
            return to.feed(data)
        return b"".join(to.feed(data[i : i + step]) for i in range(0, len(data), step))

    answer = carry(acceptor.start(), dialler)
    proof = carry(answer, acceptor)
    carry(proof, dialler)


@pytest.mark.parametrize("step", [None, 1, 7])
def test_both_sides_prove_the_secret_whole_or_in_pieces(step):
    acceptor, dialler = AcceptorHandshake(SECRET, b"data"), DiallerHandshake(SECRET, b"data")
    run(acceptor, dialler, step)
    assert acceptor.done and dialler.done
    assert acceptor.error is None and dialler.error is None
    assert (acceptor.rest, dialler.rest) == (b"", b"")


def test_the_bytes_after_the_handshake_are_the_channels_own():
    acceptor, dialler = AcceptorHandshake(SECRET, b"control"), DiallerHandshake(SECRET, b"control")
    answer = dialler.feed(acceptor.start())
    proof = acceptor.feed(answer + b"hello, initializer")
    dialler.feed(proof + b"topology")
    assert acceptor.rest == b"hello, initializer" and dialler.rest == b"topology"


@pytest.mark.parametrize(("key", "channel"), [(b"x" * 64, b"data"), (SECRET, b"control")])
def test_a_dialler_without_the_secret_is_refused_by_the_acceptor(key, channel):
    acceptor, dialler = AcceptorHandshake(SECRET, b"data"), DiallerHandshake(key, channel)
    run(acceptor, dialler)
    assert not acceptor.done
    assert str(acceptor.error) == "it does not know the cluster secret"


def test_an_acceptor_without_the_secret_is_refused_by_the_dialler():
    impostor, dialler = AcceptorHandshake(b"x" * 64, b"data"), DiallerHandshake(SECRET, b"data")
    challenge = impostor.start()
    answer = dialler.feed(challenge)
    # the impostor skips checking the answer and makes the best proof it can, with its own key
    a, d = challenge[len(MAGIC) :], answer[:32]
    proof = hmac.new(b"x" * 64, b"accept|data|" + a + d, hashlib.sha256).digest()
    assert dialler.feed(proof) == b""
    assert not dialler.done and str(dialler.error) == "it does not know the cluster secret"


def test_a_recorded_answer_is_worth_nothing_against_a_new_challenge():
    first, dialler = AcceptorHandshake(SECRET, b"data"), DiallerHandshake(SECRET, b"data")
    answer = dialler.feed(first.start())
    assert first.feed(answer) and first.done
    second = AcceptorHandshake(SECRET, b"data")
    second.start()
    second.feed(answer)  # replayed by someone who listened
    assert not second.done and second.error is not None


def test_a_peer_that_is_not_a_worker_is_refused_after_a_fixed_number_of_bytes():
    dialler = DiallerHandshake(SECRET, b"data")
    assert dialler.feed(b"HTTP/1.1 400 Bad Request\r\n" + b"x" * CHALLENGE) == b""
    assert str(dialler.error) == "it is not a machida worker (no handshake)"
    acceptor = AcceptorHandshake(SECRET, b"data")
    acceptor.start()
    forged = b"\x10\x00\x00\x00" + b"H" * 1000  # a frame header, then anything at all
    assert acceptor.feed(forged) == b"" and acceptor.error is not None
    assert len(forged) > RESPONSE and acceptor.feed(b"more") == b""


@given(st.binary(max_size=200))
def test_random_bytes_never_pass_or_raise(data):
    acceptor = AcceptorHandshake(SECRET, b"control")
    assert acceptor.start().startswith(MAGIC)
    acceptor.feed(data)
    assert not acceptor.done
    dialler = DiallerHandshake(SECRET, b"control")
    dialler.feed(data)
    assert not dialler.done


# -- the secret file ---------------------------------------------------------------------------


def test_the_secret_is_created_once_private_and_found_again(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    secret = cluster_secret()
    path = default_path()
    assert path == tmp_path / "machida" / "cluster-secret"
    assert len(secret) == 64 and cluster_secret() == secret
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert sorted(p.name for p in path.parent.iterdir()) == ["cluster-secret"]  # no temp left


def test_a_given_secret_file_is_used_as_it_is(tmp_path):
    path = tmp_path / "shared-secret"
    path.write_text("s" * 40 + "\n")
    path.chmod(0o600)
    assert cluster_secret(str(path)) == b"s" * 40


@pytest.mark.parametrize(
    ("content", "mode", "why"),
    [
        ("s" * 40, 0o644, "can be read by other users (mode 644); make it private: chmod 600"),
        ("short", 0o600, "is too short (5 characters, at least 32)"),
        (None, 0o600, "cannot read the cluster secret"),
    ],
)
def test_a_secret_file_that_cannot_be_trusted_is_refused(tmp_path, content, mode, why):
    path = tmp_path / "secret"
    if content is not None:
        path.write_text(content)
        path.chmod(mode)
    with pytest.raises(SecretError) as err:
        cluster_secret(str(path))
    assert why in str(err.value) and str(path) in str(err.value)
    assert "\n" not in str(err.value)


def test_an_existing_secret_is_kept(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    path = default_path()
    path.parent.mkdir(mode=0o700)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, b"f" * 64)
    os.close(fd)
    assert cluster_secret() == b"f" * 64


def test_a_secret_that_cannot_be_created_is_one_line_naming_the_place(tmp_path, monkeypatch):
    (tmp_path / "file").write_text("not a directory")
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "file"))
    with pytest.raises(SecretError) as err:
        cluster_secret()
    message = error_line(err.value)
    assert message.startswith(f"Error: cannot create the cluster secret {default_path()}: ")
    assert "Not a directory" in message and "--cluster-secret-file" in message
    assert "\n" not in message


def test_a_temporary_file_left_by_a_dead_process_does_not_stop_the_creation(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    path = default_path()
    path.parent.mkdir(mode=0o700)
    (path.parent / f".cluster-secret.{os.getpid()}").write_text("half")
    assert len(cluster_secret()) == 64
    assert sorted(p.name for p in path.parent.iterdir()) == ["cluster-secret"]
