"""Loading an application module the way machida did.

machida found applications and its ``wallaroo`` module through PYTHONPATH. Here
the runner's own ``wallaroo`` (``machida/lib/wallaroo.py``) goes first on
``sys.path`` and the current directory right after it; then the module named
by ``--application-module`` is imported and its ``application_setup(args)`` is
called. Every way this can go wrong becomes an :class:`ApplicationError` whose
message is one paragraph for the user, with their traceback where their code
raised; a module that fails on Python 2 syntax gets a line saying so.
"""

from __future__ import annotations

import importlib
import os
import sys
import traceback
from types import ModuleType
from typing import Any, Callable

import machida.lib
from machida.app.plan import AppPlan, build_plan
from machida.app.python2 import python2_hint
from machida.console import error_line
from machida.errors import ApplicationError

LIB_DIR = os.path.dirname(os.path.abspath(machida.lib.__file__))
WALLAROO_FILE = os.path.join(LIB_DIR, "wallaroo.py")
BUILD_FAILED = "Something went wrong while building the application"


def prepare_sys_path() -> None:
    """Put the runner's ``wallaroo`` first and the current directory right after it."""
    while LIB_DIR in sys.path:
        sys.path.remove(LIB_DIR)
    sys.path.insert(0, LIB_DIR)
    if os.getcwd() not in sys.path:
        sys.path.insert(1, os.getcwd())


def _traceback_text(err: BaseException) -> str:
    return "".join(traceback.format_exception(type(err), err, err.__traceback__)).rstrip()


def _import_failed(name: str, err: BaseException) -> ApplicationError:
    """The module raised while being imported: the user's traceback, then which module."""
    return ApplicationError(
        f"{_traceback_text(err)}\nCould not load module '{name}'", verbatim=True
    )


def import_application(name: str) -> ModuleType:
    """Import ``name`` (dotted names allowed) after :func:`prepare_sys_path`."""
    prepare_sys_path()
    try:
        module = importlib.import_module(name)
    except ModuleNotFoundError as err:
        if err.name is not None and name.startswith(err.name) and name[len(err.name) :][:1] in ".":
            # the module itself is missing (not something it imports): a wrong name or place
            raise ApplicationError(
                f"Could not load module '{name}': no module of that name in "
                f"{os.getcwd()} or on the Python path"
            ) from err
        raise _import_failed(name, err) from err
    except SyntaxError as err:
        hint = python2_hint(err)
        if hint is not None:
            # where the syntax is, not the import machinery's frames, then one line saying why
            shown = "".join(traceback.format_exception_only(type(err), err)).rstrip()
            text = f"{shown}\nCould not load module '{name}': {hint}"
            raise ApplicationError(text, verbatim=True) from err
        raise _import_failed(name, err) from err
    except Exception as err:
        raise _import_failed(name, err) from err
    check_wallaroo()
    return module


def check_wallaroo() -> None:
    """Make sure ``import wallaroo`` gives this runner's module, not another one."""
    wallaroo = sys.modules.get("wallaroo")
    if wallaroo is None:
        wallaroo = importlib.import_module("wallaroo")
    loaded = os.path.realpath(getattr(wallaroo, "__file__", "") or "<built-in>")
    if loaded != os.path.realpath(WALLAROO_FILE):
        raise ApplicationError(
            f"'import wallaroo' loaded {loaded}, not the machida API module {WALLAROO_FILE}"
        )


def call_setup(module: ModuleType, name: str, args: list[str]) -> Any:
    """Call ``application_setup(args)``; its failures name the module."""
    setup = getattr(module, "application_setup", None)
    if not callable(setup):
        raise ApplicationError(f"module '{name}' has no application_setup(args)")
    try:
        return setup(list(args))
    except SystemExit:
        raise  # argparse usage errors end the worker with their own status, as in machida
    except Exception as err:
        raise ApplicationError(
            f"{_traceback_text(err)}\n"
            f"application_setup(args) of module '{name}' raised {type(err).__name__}: {err}",
            verbatim=True,
        ) from err


def serializers(module: ModuleType) -> tuple[Callable[[Any], Any], Callable[[Any], Any]]:
    """The module's own ``serialize``/``deserialize`` if it has both, else ``wallaroo``'s."""
    serialize, deserialize = (
        getattr(module, "serialize", None),
        getattr(module, "deserialize", None),
    )
    if callable(serialize) and callable(deserialize):
        return serialize, deserialize
    wallaroo = importlib.import_module("wallaroo")
    return wallaroo.serialize, wallaroo.deserialize


def ints_round_trip(pair: tuple) -> bool:
    """Whether plain ints may cross workers as u64s: the module's pair gives them back as is.

    machida serialised every message; sending an int as 8 bytes is only allowed
    when the result is identical, which a few probes of the pair confirm.
    """
    serialize, deserialize = pair
    try:
        return all(
            (back := deserialize(serialize(v))) == v and back.__class__ is int
            for v in (0, 1, 12, 2**32 + 5, 2**63, 2**64 - 1)
        )
    except Exception:
        return False


def report_load_failure(err: ApplicationError, warn: Callable[[str], None]) -> None:
    """What ``machida`` and ``machida-flink`` print when the application cannot be loaded."""
    warn(error_line(err))
    if "Could not load module" not in str(err):
        warn(BUILD_FAILED)


def load_plan(
    name: str | ModuleType, args: list[str], warn: Callable[[str], None] | None = None
) -> tuple[ModuleType, AppPlan]:
    """Import the application, run its setup with ``args`` and build its plan."""
    if isinstance(name, ModuleType):
        prepare_sys_path()
        check_wallaroo()
        module, module_name = name, name.__name__
    else:
        module, module_name = import_application(name), name
    actions = call_setup(module, module_name, args)
    return module, build_plan(actions, module_name, warn)
