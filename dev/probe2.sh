# device call 2 of the stream-capacity work: GPU tests of the new hot path, GPU JPEG, the FLEX-1 stream sweep
source dev/device_env.sh
cd /tmp
timeout 170 python3 -m pytest -q -m gpu -p no:cacheprovider -x $REPO/tests/test_frames_gpu.py $REPO/tests/test_jpeg.py \
  $REPO/tests/test_engines.py $REPO/tests/test_rasterizer_gpu.py 2>&1 | tee $OUT/gpu_tests.log | tail -15
timeout 60 python3 $REPO/dev/jpeg_probe.py --out $OUT --batches 1,32,64 2>&1 | grep -v -i "nvjpeg\|nvtiff\|warn" | tail -6
timeout 380 python3 -m flexrt.cli bench --preset flex1 --phases grpc --budget 350 --streams 1,32,48,64,80,96 \
  --stream-encoding jpeg,raw --creation-streams 32 --duration 5 --stream-warmup 1 --grpc-backend torch-compiled-bf16 \
  --out $OUT/bench 2>&1 | grep -E "grpc|error|Error|warm-up|listening|SERVING|Traceback" | tail -30
