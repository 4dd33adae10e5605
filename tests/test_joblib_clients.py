"""What libraries built on joblib.Memory rely on beyond its methods (nilearn, librosa, scikit-learn).

A program that deletes its cache folder after use gets no warning; a warning raised
inside a memoized function with ``stacklevel`` reaches the caller through a known,
small number of cachelib frames, which helpers can skip by file.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import warnings

import pytest

import cachelib

pytestmark = pytest.mark.timeout(120)

CACHELIB_DIR = os.path.dirname(cachelib.__file__)


def test_a_deleted_temporary_location_is_dropped_quietly(tmp_path):
    """The TemporaryDirectory pattern: calls, then the folder goes; the counts flushed after it
    (here at exit, else a second later) neither warn nor recreate the folder."""
    program = textwrap.dedent("""
        import sys, tempfile
        import cachelib

        with tempfile.TemporaryDirectory(dir=sys.argv[1]) as folder:
            for make in (cachelib.Cache, cachelib.Memory):
                f = make(folder + "/cache", verbose=0).cache(lambda x: x * 2)
                f(1), f(1), f(2)
        print(folder)
    """)
    done = subprocess.run([sys.executable, "-W", "always", "-c", program, str(tmp_path)], capture_output=True,
                          text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert "Warning" not in done.stderr, done.stderr
    assert not os.path.exists(done.stdout.strip())
    assert os.listdir(tmp_path) == []


def _warn_to_caller():
    warnings.warn("deprecated argument", DeprecationWarning, stacklevel=2)
    return 1


def _frames_skipped_to_the_caller() -> str:
    """What a library's stack-level helper does: the first frame outside itself and cachelib."""
    frame = sys._getframe(2)  # the memoized function's caller, as stacklevel=2 would see it
    while frame is not None and frame.f_code.co_filename.startswith(CACHELIB_DIR):
        frame = frame.f_back
    return frame.f_code.co_filename


@pytest.mark.parametrize("make", [cachelib.Cache, lambda where: cachelib.Memory(where, verbose=0)],
                         ids=["Cache", "Memory"])
def test_one_cachelib_frame_stands_between_a_call_and_the_function(tmp_path, make):
    cache = make(tmp_path / "cache")
    warned = cache.cache(_warn_to_caller)
    with pytest.warns(DeprecationWarning) as caught:
        warned()
    assert caught[0].filename.startswith(CACHELIB_DIR)  # stacklevel=2 lands on cachelib's call path
    located = cache.cache(_frames_skipped_to_the_caller)
    assert located() == __file__


@pytest.mark.skipif(sys.version_info < (3, 12), reason="skip_file_prefixes is new in Python 3.12")
def test_skip_file_prefixes_attributes_a_warning_to_the_caller(tmp_path):
    @cachelib.Cache(tmp_path / "cache").memoize
    def old_api(x):
        warnings.warn("old_api is deprecated", DeprecationWarning, stacklevel=2,
                      skip_file_prefixes=(CACHELIB_DIR,))
        return x

    with pytest.warns(DeprecationWarning) as caught:
        old_api(1)
    assert caught[0].filename == __file__
