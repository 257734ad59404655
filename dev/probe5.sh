# device call 5: the fitting GPU tests and step timing again, after the device fix
source dev/device_env.sh
cd /tmp
timeout 60 python3 -m pytest -q -m gpu -p no:cacheprovider -x $REPO/tests/test_fitting.py $REPO/tests/test_fitting_service.py \
  $REPO/tests/test_fit_rpc.py 2>&1 | tee $OUT/gpu_tests.log | grep -E "passed|failed|Error|error" | tail -6
timeout 75 python3 -m flexrt.benchmarks.bench_fitting --steps 10 --warmup 2 --out $OUT/bench_fitting.json 2>&1 | grep -v -i warn | tail -16
