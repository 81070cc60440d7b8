"""Build script for fastlstm's Cython extensions.

Environment switches:

* ``FASTLSTM_NO_OPENMP=1`` builds without OpenMP (serial kernels).  The build
  also falls back to serial automatically when the compiler cannot compile and
  link an OpenMP program.
* ``FASTLSTM_DEBUG=1`` turns Cython's bounds checks and wraparound back on and
  compiles with ``-O0 -g`` (for running the test suite under a debugger).
* ``FASTLSTM_SANITIZE=1`` builds for AddressSanitizer and UndefinedBehaviorSanitizer
  (``-fsanitize=address,undefined``, ``-O1 -g``, UB is fatal).  Python itself is not
  instrumented, so the sanitizer runtimes must be preloaded: ``tools/sanitize.sh``
  builds this variant in a temporary copy and runs the test suite under it.
"""

import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile

import numpy
from Cython.Build import cythonize
from setuptools import Extension, setup


def _env_flag(name):
    return os.environ.get(name, "").strip().lower() not in ("", "0", "false", "no")


def _compiler_supports_openmp():
    """Try to compile and link a tiny OpenMP program with the configured C compiler."""
    cc = os.environ.get("CC") or sysconfig.get_config_var("CC") or "cc"
    cc = cc.split()
    if shutil.which(cc[0]) is None:
        return False
    code = (
        "#include <omp.h>\n"
        "int main(void) { int n = 0;\n"
        "#pragma omp parallel reduction(+:n)\n n += 1;\n"
        " return n > 0 ? 0 : 1; }\n"
    )
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "check.c")
        with open(src, "w") as f:
            f.write(code)
        try:
            res = subprocess.run(
                cc + ["-fopenmp", src, "-o", os.path.join(tmp, "check")],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                check=False,
            )
        except OSError:
            return False
        return res.returncode == 0


def _openmp_flags():
    if _env_flag("FASTLSTM_NO_OPENMP"):
        print("fastlstm: building without OpenMP (FASTLSTM_NO_OPENMP is set)")
        return []
    if sys.platform == "win32" or not _compiler_supports_openmp():
        print("fastlstm: the C compiler has no working OpenMP; building serial kernels")
        return []
    return ["-fopenmp"]


DEBUG = _env_flag("FASTLSTM_DEBUG")
SANITIZE = _env_flag("FASTLSTM_SANITIZE")
OMP = _openmp_flags()
OPT = ["-O0", "-g"] if DEBUG else ["-O3"]
SAN = []
if SANITIZE:
    print("fastlstm: building for AddressSanitizer and UndefinedBehaviorSanitizer")
    SAN = ["-fsanitize=address,undefined", "-fno-omit-frame-pointer",
           "-fno-sanitize-recover=undefined"]
    OPT = ["-O1", "-g"] if not DEBUG else OPT

directives = {
    "language_level": 3,
    "boundscheck": DEBUG,
    "wraparound": DEBUG,
    "cdivision": True,
    "initializedcheck": DEBUG,
    "embedsignature": True,
}


def _ext(name, openmp=False):
    # Every compiled module lives in fastlstm/_ext, its C headers in fastlstm/_ext/src.
    return Extension(
        f"fastlstm._ext.{name}",
        [f"fastlstm/_ext/{name}.pyx"],
        include_dirs=["fastlstm/_ext/src", numpy.get_include()],
        define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
        extra_compile_args=OPT + SAN + (OMP if openmp else []),
        extra_link_args=SAN + (OMP if openmp else []),
    )


extensions = [
    _ext("blas"),
    _ext("openmp", openmp=True),
    _ext("kernels", openmp=True),
]

setup(
    ext_modules=cythonize(
        extensions,
        compiler_directives=directives,
    ),
)
