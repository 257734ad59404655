# Source on the lent GPU machine from the repo root:  source dev/device_env.sh
# 1. wheels carried in .whl/ (git-ignored) -> /tmp/site; 2. flexrt importable without installing (a namespace of
# links to the repo's folders, as benchmarks/run_device.sh does); 3. reference data carried in .devdata/shared.
REPO=$(pwd)
if ls .whl/*.whl >/dev/null 2>&1; then
  # installed once per warm machine: reinstalling would touch gsplat's sources and make its JIT build start over
  WHEELS=$(cd .whl && ls *.whl | sort | tr '\n' ' ')
  if [ "$(cat /tmp/site/.flexrt-wheels 2>/dev/null)" != "$WHEELS" ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
      && echo "$WHEELS" > /tmp/site/.flexrt-wheels
  fi
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
  for d in /tmp/site/nvidia/*/lib; do [ -d "$d" ] && export LD_LIBRARY_PATH=$d${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}; done
fi
mkdir -p /tmp/flexrt-site/flexrt && rm -f /tmp/flexrt-site/flexrt/*
ln -sf "$REPO/flexrt/__init__.py" "$REPO/flexrt/cli.py" /tmp/flexrt-site/flexrt/
for d in model export runtime kernels proto benchmarks fitting corpus training; do
  [ -d "$REPO/$d" ] && ln -sfn "$REPO/$d" /tmp/flexrt-site/flexrt/$d
done
export PYTHONPATH=/tmp/flexrt-site:$PYTHONPATH PYTHONUNBUFFERED=1
[ -d "$REPO/.devdata/shared" ] && export FLEXRT_SHARED=$REPO/.devdata/shared
echo "device_env: $(python3 -c 'import torch,flexrt;print(flexrt.__file__, torch.__version__, torch.cuda.get_device_name(0))' 2>&1)"
