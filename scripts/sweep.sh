#!/usr/bin/env bash
# Run a base-to-new grid one run after another (scripts/launch.py spreads it over GPUs or Slurm).
#
#   bash scripts/sweep.sh METHODS DATASETS SEEDS [KEY VALUE ...]
#
#   METHODS    comma list or `all` (every method with a paper config); METHOD:CFG picks a config
#   DATASETS   comma list of dataset config stems, or `all` (the 11 datasets)
#   SEEDS      comma list, or `all` (1,2,3)
#   KEY VALUE  config options for every run
#
# Same environment as scripts/base2new.sh (DATA, OUTPUT, SHOTS, TAG, TRAINER_MODULE, PYTHON).
# Finished runs are skipped, interrupted ones resume; a failed run does not stop the sweep.
# Example: bash scripts/sweep.sh CoOp,KgCoOp all all && python parse_results.py output/
set -uo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PYTHON=${PYTHON:-python}
if [[ $# -lt 3 ]]; then
    awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "${BASH_SOURCE[0]}"
    exit 2
fi
# One axis of the grid, one entry per line; a failing interpreter or a bad name stops the sweep.
grid_axis() {
    local out
    out=$("$PYTHON" "$REPO/scripts/methods.py" list "$1" "$2") || exit 2
    [[ -n $out ]] || { echo "sweep.sh: no $1 in '$2'" >&2; exit 2; }
    printf '%s\n' "$out"
}
methods_list=$(grid_axis methods "$1") || exit 2
datasets_list=$(grid_axis datasets "$2") || exit 2
seeds_list=$(grid_axis seeds "$3") || exit 2
mapfile -t methods <<< "$methods_list"
mapfile -t datasets <<< "$datasets_list"
mapfile -t seeds <<< "$seeds_list"
shift 3

failed=()
total=$((${#methods[@]} * ${#datasets[@]} * ${#seeds[@]}))
count=0
for spec in "${methods[@]}"; do
    method=${spec%%:*}
    cfg=()
    [[ $spec == *:* ]] && cfg=("${spec#*:}")
    for dataset in "${datasets[@]}"; do
        for seed in "${seeds[@]}"; do
            count=$((count + 1))
            echo "=== [$count/$total] $spec $dataset seed $seed"
            if ! bash "$REPO/scripts/base2new.sh" "$method" "$dataset" "$seed" "${cfg[@]}" "$@"; then
                failed+=("$spec $dataset seed $seed")
            fi
        done
    done
done

echo "=== sweep: $((total - ${#failed[@]})) of $total runs finished"
if [[ ${#failed[@]} -gt 0 ]]; then
    printf 'failed: %s\n' "${failed[@]}"
    exit 1
fi
