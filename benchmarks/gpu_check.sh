#!/usr/bin/env bash
# The prepared GPU check (≤ 5 minutes on one GPU): dense CRF time at 4096² (target ≤ 0.1 s),
# pick throughput of predict.py on simulated 4096² micrographs (micrographs/s), and a two-GPU
# DDP smoke run of train.py when two GPUs are present.
#
#   bash benchmarks/gpu_check.sh OUT_DIR [CKPT]
#
# CKPT: default the packaged general model (cryoparticle/models/weights/general.ckpt) when it
# exists; without either the pick check is skipped. Writes OUT_DIR/crf.json, OUT_DIR/pick.json,
# OUT_DIR/ddp.json (each check's record) and OUT_DIR/gpu_check.json (all of them with the GPU,
# the exit code and seconds of each step); logs in OUT_DIR/*.log. Environment: DEVICE (default
# cuda), CRF_SIZE (4096), PICK_N (8), PICK_SIZE (4096), PYTHON (python).
set -u -o pipefail

if [ $# -lt 1 ]; then
    echo "usage: bash benchmarks/gpu_check.sh OUT_DIR [CKPT]" >&2
    exit 2
fi
OUT=$1
CKPT=${2:-}
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(dirname "$HERE")
PYTHON=${PYTHON:-python}
DEVICE=${DEVICE:-cuda}
CRF_SIZE=${CRF_SIZE:-4096}
PICK_N=${PICK_N:-8}
PICK_SIZE=${PICK_SIZE:-4096}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
cd "$ROOT" || exit 2

if [ -z "$CKPT" ] && [ -f cryoparticle/models/weights/general.ckpt ]; then
    CKPT=cryoparticle/models/weights/general.ckpt
fi
GPUS=$("$PYTHON" -c 'import torch; print(torch.cuda.device_count())' 2>/dev/null || echo 0)
STEPS=()

step() {  # step NAME TIMEOUT_S COMMAND...: run with a timeout, log, record exit code and time
    local name=$1 limit=$2
    shift 2
    local t0=$SECONDS
    echo "== $name: $*"
    timeout "$limit" "$@" >"$OUT/$name.log" 2>&1
    local rc=$?
    tail -n 3 "$OUT/$name.log"
    STEPS+=("{\"step\": \"$name\", \"rc\": $rc, \"seconds\": $((SECONDS - t0))}")
}

step crf 120 "$PYTHON" benchmarks/gpu_check.py crf --size "$CRF_SIZE" --device "$DEVICE" \
    --json "$OUT/crf.json"
if [ -n "$CKPT" ]; then
    step pick 150 "$PYTHON" benchmarks/gpu_check.py pick --ckpt "$CKPT" --n "$PICK_N" \
        --size "$PICK_SIZE" --device "$DEVICE" --json "$OUT/pick.json"
else
    echo "== pick: skipped (no CKPT argument and no packaged general model)"
fi
if [ "$GPUS" -ge 2 ]; then
    step ddp 150 "$PYTHON" train.py trainer=ddp trainer.devices=2 debug=fdr logger=csv \
        print_config=false "hydra.run.dir=$OUT/ddp_run"
    echo "{\"gpus\": $GPUS, \"devices\": 2, \"run\": ${STEPS[-1]}}" >"$OUT/ddp.json"
else
    echo "== ddp: skipped ($GPUS GPU(s))"
fi

# everything in one record
"$PYTHON" - "$OUT" "$GPUS" "${STEPS[@]}" <<'EOF'
import json, sys
from pathlib import Path
out, gpus, steps = Path(sys.argv[1]), int(sys.argv[2]), [json.loads(s) for s in sys.argv[3:]]
record = {"gpus": gpus, "steps": steps}
try:
    import torch
    record["device_name"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
except Exception as err:  # noqa: BLE001 - report, never fail the summary
    record["device_name"] = f"unknown ({err})"
for name in ("crf", "pick", "ddp"):
    path = out / f"{name}.json"
    if path.exists():
        record[name] = json.loads(path.read_text())
tmp = out / "gpu_check.json.tmp"
tmp.write_text(json.dumps(record, indent=2) + "\n")
tmp.replace(out / "gpu_check.json")
crf = record.get("crf", {})
pick = record.get("pick", {})
print(f"CRF {crf.get('size', '?')}²: {crf.get('seconds', float('nan')):.3f} s (target ≤ 0.1 s); "
      f"pick: {pick.get('micrographs_per_s_process', float('nan')):.2f} micrographs/s; "
      "steps: " + ", ".join(f"{s['step']}={s['rc']}" for s in steps))
sys.exit(int(any(s["rc"] for s in steps)))
EOF
