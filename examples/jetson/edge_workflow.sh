#!/usr/bin/env bash
# The edge workflow of README.md over ssh: the latency table and the verdict on the Jetson, the
# search on this machine.
#
#   JETSON=user@jetson ./edge_workflow.sh [SPACE] [PRECISION]
#
# JETSON_N2D: the nas2deploy command on the Jetson (default ~/n2d/bin/nas2deploy).
# Extra search options: SEARCH_ARGS="--latency-ms 2.5 --retrain-epochs 20".
set -euo pipefail

: "${JETSON:?set JETSON=user@host of the Jetson}"
SPACE="${1:-dsonas}"
PRECISION="${2:-fp16}"
REMOTE_N2D="${JETSON_N2D:-~/n2d/bin/nas2deploy}"
TARGET="tensorrt:cuda:${PRECISION}"
TABLE="jetson.${SPACE}.${PRECISION}.lut.json"
BUNDLE="bundle-${SPACE}-${PRECISION}"
read -r -a EXTRA <<< "${SEARCH_ARGS:-}"

echo "== 1/4 latency table on ${JETSON} (${TARGET})"
ssh "$JETSON" "$REMOTE_N2D lut build --space $SPACE --target $TARGET --out $TABLE"
scp "$JETSON:$TABLE" "$TABLE"

echo "== 2/4 search and export here against $TABLE"
status=0
nas2deploy search-and-export --method "$SPACE" --target "$TARGET" --latency-model lut \
    --lut "$TABLE" --export onnx,tensorrt --out "$BUNDLE" --overwrite ${EXTRA[@]+"${EXTRA[@]}"} || status=$?
if [ "$status" -ne 0 ] && [ "$status" -ne 3 ]; then
  exit "$status"
fi

echo "== 3/4 engine build on ${JETSON}"
rsync -a --delete "$BUNDLE/" "$JETSON:$BUNDLE/"
ssh "$JETSON" "$REMOTE_N2D build-engine $BUNDLE"

echo "== 4/4 latency on ${JETSON}"
status=0
ssh "$JETSON" "$REMOTE_N2D measure $BUNDLE --target tensorrt:cuda" || status=$?
rsync -a "$JETSON:$BUNDLE/" "$BUNDLE/"  # the engine and the manifest that records it
exit "$status"
