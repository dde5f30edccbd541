#!/usr/bin/env bash
# One entry point for a fresh clone (and for CI):
#   bash .ci/env.sh demo                 set up .venv if needed, then run the demo
#   bash .ci/env.sh test [pytest args]   set up .venv if needed, then run the CPU test suite
#   bash .ci/env.sh setup                only set up .venv
# Setup is skipped when .venv's stamp matches the hash of pyproject.toml and this script.
# Why these packages and versions: README.md, "Compatibility".
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
STAMP="$VENV/.nemotron3-super-env"
LOG="$VENV/setup.log"

TORCH="torch==2.14.1"                     # CUDA build from PyPI; runs on CPU
HOST="megatron-bridge==0.6.2"             # installed --no-deps: its declared set does not resolve here
# What the host really imports beyond our own dependencies (measured, see README.md, "Compatibility"):
#   recipes / instantiate_utils: megatron.energon, tensorboard, diffusers, modelopt (our [recipes] extra)
HOST_EXTRAS=(megatron-energon==7.4.1 tensorboard==2.21.0 diffusers==0.42.1 nvidia-modelopt==0.47.0)
# megatron-core's Mamba mixer refuses to build without mamba-ssm. Both ship as sources only; built
# without CUDA they install as pure Python in seconds (Triton SSD kernels; no fused CUDA path).
# --no-deps: mamba-ssm declares ~507 MB (tilelang, nvidia-cutlass-dsl, z3-solver, quack-kernels,
# apache-tvm-ffi) that only its Mamba-3 kernels import, behind try/except; the Mamba-2 path megatron-core
# uses needs torch, triton, einops and packaging, all installed by the steps before (README "Compatibility").
SSM=(mamba-ssm==2.3.2.post1 causal-conv1d==1.7.0)

die() { echo "env.sh: ERROR: $*" >&2; exit 1; }

usage() {
  echo "usage: bash .ci/env.sh {demo|test [pytest args...]|setup}" >&2
  exit 2
}

# step NAME CMD...: run CMD with its output in $LOG, print the wall time, fail loudly
step() {
  local name="$1" t0=$SECONDS rc=0
  shift
  printf '==> %s\n' "$name"
  echo "### $name: $*" >>"$LOG"
  "$@" >>"$LOG" 2>&1 || rc=$?
  if [ "$rc" -ne 0 ]; then
    echo "env.sh: FAILED at step '$name' (exit $rc). Last lines of $LOG:" >&2
    tail -n 40 "$LOG" >&2
    exit "$rc"
  fi
  printf '    done in %ds\n' "$((SECONDS - t0))"
}

is_py312() { [ -n "$1" ] && "$1" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 12))' >/dev/null 2>&1; }

find_python312() {
  local cand root
  # python3.12 on PATH (a pyenv shim exists even when 3.12 is not the selected version, so run it)
  if cand="$(command -v python3.12 2>/dev/null)" && is_py312 "$cand"; then echo "$cand"; return; fi
  if command -v pyenv >/dev/null 2>&1; then root="$(pyenv root)"; else root="${PYENV_ROOT:-$HOME/.pyenv}"; fi
  for cand in $(ls -d "$root"/versions/3.12*/bin/python3.12 2>/dev/null | sort -V -r); do
    if is_py312 "$cand"; then echo "$cand"; return; fi
  done
  die "Python 3.12 is required (megatron-bridge 0.6.x needs >=3.12,<3.13) and none was found.
  Put a python3.12 on PATH (your distribution's package, or python.org), or install it with
  pyenv: 'pyenv install 3.12' (this script then finds \$(pyenv root)/versions/3.12*/bin/python3.12)."
}

env_hash() { cat "$ROOT/pyproject.toml" "$ROOT/.ci/env.sh" | sha256sum | cut -d' ' -f1; }

setup() {
  local want t0=$SECONDS py
  want="$(env_hash)"
  if [ -x "$VENV/bin/python" ] && [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want" ]; then
    echo "==> .venv up to date (stamp $(printf %.12s "$want")), setup skipped"
    return
  fi
  echo "==> setting up $VENV (pip output: $LOG)"
  if [ -e "$VENV" ] && ! is_py312 "$VENV/bin/python"; then
    echo "==> removing $VENV (not a Python 3.12 environment)"
    rm -rf "$VENV"
  fi
  if [ ! -x "$VENV/bin/python" ]; then
    py="$(find_python312)"
    mkdir -p "$VENV" && : >"$LOG"
    step "create .venv with $py ($("$py" -V 2>&1))" "$py" -m venv "$VENV"
  fi
  rm -f "$STAMP"
  local pip=("$VENV/bin/python" -m pip --disable-pip-version-check)
  step "upgrade pip" "${pip[@]}" install -q --upgrade pip
  step "install $TORCH" "${pip[@]}" install -q "$TORCH"
  step "install nemotron3-super (editable, [test,nemo-run])" "${pip[@]}" install -q -e "$ROOT[test,nemo-run]"
  step "install $HOST --no-deps" "${pip[@]}" install -q --no-deps "$HOST"
  step "install host imports: ${HOST_EXTRAS[*]}" "${pip[@]}" install -q "${HOST_EXTRAS[@]}"
  step "install ${SSM[*]} (pure Python, no CUDA build)" env MAMBA_FORCE_BUILD=TRUE MAMBA_SKIP_CUDA_BUILD=TRUE \
    CAUSAL_CONV1D_FORCE_BUILD=TRUE CAUSAL_CONV1D_SKIP_CUDA_BUILD=TRUE \
    "${pip[@]}" install -q --no-deps --no-build-isolation "${SSM[@]}"
  step "check host imports (conversion, recipes)" env MEGATRON_CONFIG_LOCK_DIR="$VENV/locks" \
    "$VENV/bin/python" -c 'import nemotron3_super  # applies the host fixes
import megatron.bridge, megatron.bridge.models, megatron.bridge.models.conversion.model_bridge
import megatron.bridge.recipes, megatron.bridge.utils.instantiate_utils'
  step "check megatron-core's Mamba mixer finds mamba-ssm" "$VENV/bin/python" -c 'import nemotron3_super.conversion
import megatron.core.ssm.mamba_mixer as m
assert m.HAVE_MAMBA_SSM, "mamba-ssm does not import: megatron-core cannot build Mamba layers"'
  echo "$want" >"$STAMP"
  echo "==> setup done in $((SECONDS - t0))s (log: $LOG)"
}

[ $# -ge 1 ] || usage
cmd="$1"
shift
cd "$ROOT"
case "$cmd" in
  setup) setup ;;
  demo)
    setup
    echo "==> demo"
    exec "$VENV/bin/nemotron3-super" demo
    ;;
  test)
    setup
    echo "==> pytest"
    exec "$VENV/bin/python" -m pytest tests -q -m "not gpu" "$@"
    ;;
  *) usage ;;
esac
