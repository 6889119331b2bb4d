#!/usr/bin/env bash
# Create the peer (TRL) virtual environment for the side-by-side benchmarks, outside the posttrain venv.
#
#   benchmarks/peer/make_venv.sh [TRL_VERSION] [TRANSFORMERS_VERSION]
#
# Creates benchmarks/.venv-trl-<TRL_VERSION> (git-ignored). torch==2.13.0 is installed first (the CPU
# wheel on these machines; a looser pin drags in GBs of CUDA packages), then trl with a transformers
# release it supports.
#
# * trl 1.x: transformers, accelerate and datasets are pinned to the versions in posttrain's own venv, so
#   the two libraries run on the same stack and only the trainer code differs.
# * both: peft, bitsandbytes and Pillow at the versions in posttrain's venv. transformers' Trainer imports peft when it
#   is installed, and peft imports bitsandbytes (which imports torch._inductor): about 170 MB of RSS and 2-3 s
#   at start-up that a posttrain run pays in posttrain's venv. Without them in the peer venv too, peak-memory
#   ratios would count that import against posttrain (NOTES.md, "Fifth batch").
# * trl 0.21.0 (the last release with PPO, Nash-MD, XPO, PRM and BCO): it predates transformers 5 (its
#   trainers pass arguments transformers 5 removed), so it gets the transformers/accelerate/datasets releases
#   of its own time (below), plus scikit-learn and joblib (its "bco" extra: BCO's density-ratio classifier).
#   Only torch is shared with posttrain then. Also diffusers (DDPO and AlignProp, which TRL 0.21 still ships):
#   posttrain's venv has diffusers 0.42.1, which requires huggingface-hub>=1.32, while transformers 4.56.2 requires
#   huggingface-hub<1.0, so the two cannot share a venv; 0.39.0 is the newest diffusers release that installs next
#   to transformers 4.56.2 (DIFFUSERS_LEGACY overrides it), and huggingface-hub stays below 1.0.
set -euo pipefail
HERE="$(cd "$(dirname "$0")/.." && pwd)"
ROOT="$(cd "$HERE/.." && pwd)"
TRL="${1:-1.16.0}"
PT_PY="${PT_PY:-$ROOT/.venv/bin/python}"  # posttrain's venv (the versions to share); PT_PY overrides it
ver() { "$PT_PY" -c "import importlib.metadata as m; print(m.version('$1'))" 2>/dev/null || true; }
EXTRA=()
case "$TRL" in
  0.*)
    TF_DEFAULT=4.56.2; ACC=1.10.1; DS=4.0.0
    EXTRA=(scikit-learn joblib "diffusers==${DIFFUSERS_LEGACY:-0.39.0}" "huggingface-hub<1.0")
    ;;
  *)
    TF_DEFAULT="$(ver transformers)"; ACC="$(ver accelerate)"; DS="$(ver datasets)"
    ;;
esac
# Pillow: image processors (sft-vlm's Llava processor; diffusers) need it; the version of posttrain's venv
for pkg in peft bitsandbytes pillow; do
  v="$(ver $pkg)"; [ -n "$v" ] && EXTRA+=("$pkg==$v")
done
TF="${2:-$TF_DEFAULT}"
VENV="$HERE/.venv-trl-$TRL"
PY="${PYTHON:-python3}"
if [ -x "$VENV/bin/python" ] && "$VENV/bin/python" -c "import trl, sys; sys.exit(trl.__version__ != '$TRL')" 2>/dev/null; then
  if "$VENV/bin/python" -c "import importlib.metadata as m, sys; sys.exit(any(m.version(p.split('==')[0]) != p.split('==')[1] for p in sys.argv[1:] if '==' in p))" "${EXTRA[@]}" 2>/dev/null; then
    echo "$VENV ready (trl $TRL)"; exit 0
  fi
  "$VENV/bin/pip" install -q --disable-pip-version-check torch==2.13.0 "${EXTRA[@]}"  # an older venv: add the extras
  echo "$VENV ready (trl $TRL, extras updated)"; exit 0
fi
"$PY" -m venv "$VENV"
"$VENV/bin/pip" install -q --disable-pip-version-check torch==2.13.0
pins=("trl==$TRL")
[ -n "$TF" ] && pins+=("transformers==$TF")
[ -n "$ACC" ] && pins+=("accelerate==$ACC")
[ -n "$DS" ] && pins+=("datasets==$DS")
"$VENV/bin/pip" install -q --disable-pip-version-check torch==2.13.0 "${pins[@]}" "${EXTRA[@]}"
"$VENV/bin/python" -c "import torch, transformers, trl; print('trl', trl.__version__, 'transformers', transformers.__version__, 'torch', torch.__version__)"
