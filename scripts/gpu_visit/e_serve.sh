# call E (machine warm, GGUF in the cache): the serving targets with per-process CPU time per chunk
source scripts/gpu_env.sh
timeout 420 python tests/benchmarks/serve_vs_offline.py --model smollm2-135m-instruct --num-prompts 64 --output-len 128 --repeats 3 --output-json $OUT/serve.json > $OUT/serve.txt 2>&1; echo "serve rc $?"; tail -12 $OUT/serve.txt
