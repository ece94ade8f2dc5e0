# Shared by tools/setup_env.sh and tools/device_check.sh (sourced, not executed):
# how mmcv (with its compiled ops) is built from its sdist for the torch at hand.
# PyPI has no mmcv wheel for current torch, and mmseg 1.2.x imports mmcv.ops at
# import time, so both scripts build mmcv $VERSION from mmcv-$VERSION.tar.gz:
#
#   mmcv_fetch_sdist PY VERSION DIR       download mmcv-VERSION.tar.gz into DIR (PyPI)
#   mmcv_unpack_patched TARBALL DIR       extract into DIR/mmcv-VERSION and patch it
#   mmcv_build_wheel PY SRC WHEEL_DIR     `setup.py bdist_wheel` of SRC into WHEEL_DIR
#                                         (MMCV_WITH_OPS, MAX_JOBS, FORCE_CUDA from the
#                                         environment; output to stdout/stderr)
#   mmcv_build_progress LOG               ninja's last "[done/total]" in a build log
#
# Nothing here prints on success.

mmcv_fetch_sdist() {
  "$1" -m pip --disable-pip-version-check download -q --no-deps --no-binary :all: \
    "mmcv==$2" -d "$3"
}

# The one source patch: torch>=2.14 headers need C++20; mmcv's setup.py hard-codes
# -std=c++17 after CFLAGS. (C++20 also builds against older torch headers.)
mmcv_patch_cxx20() {
  sed -i 's/-std=c++17/-std=c++20/g' "$1/setup.py"
  if ! grep -q -- '-std=c++20' "$1/setup.py"; then
    echo "mmcv_patch_cxx20: $1/setup.py has no -std=c++17 flag to raise to C++20" >&2
    return 1
  fi
}

mmcv_unpack_patched() {
  local tarball="$1" dir="$2" name
  name="$(basename "$tarball" .tar.gz)"
  tar -xzf "$tarball" -C "$dir"
  mmcv_patch_cxx20 "$dir/$name"
}

mmcv_build_wheel() {
  ( cd "$2" && "$1" setup.py -q bdist_wheel -d "$3" )
}

mmcv_build_progress() {
  grep -oE '^\[[0-9]+/[0-9]+\]' "$1" | tail -1 || true
}
