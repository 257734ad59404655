# device call 1 of the stream-capacity work: decoder variants, JPEG encoders, gRPC I/O capacity
source dev/device_env.sh
cd /tmp   # a neutral cwd: the repo's own flexrt/ folder must not shadow the namespace
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv
timeout 330 python3 $REPO/dev/decoder_variants.py --out $OUT --budget 270 --batches 1,32,64 --profile fp8-up16 2>&1 | tee $OUT/variants.log | grep -v Warning
timeout 100 python3 $REPO/dev/jpeg_probe.py --out $OUT 2>&1 | tee $OUT/jpeg.log
timeout 110 python3 -m flexrt.benchmarks.bench_grpc_io --streams 64,128,192 --duration 4 --out $OUT 2>&1 | tee $OUT/grpc_io.log
