# call D (machine warm, GGUF in the cache): 8B step with the heads on Triton ops, eager linears' host time, constrained speed
source scripts/gpu_env.sh
timeout 200 python tests/benchmarks/heads_step_8b_gpu.py --out $OUT/heads_step_8b.json > $OUT/heads_step_8b.txt 2>&1; echo "8b rc $?"; tail -12 $OUT/heads_step_8b.txt
timeout 200 python tests/benchmarks/eager_linear_host_time.py --variants default,mem50 --out $OUT/eager_linear.json > $OUT/eager_linear.txt 2>&1; echo "eager rc $?"; cut -c1-400 $OUT/eager_linear.txt | tail -20
timeout 150 python tests/benchmarks/constrained_speed.py --methods plain,ngram --out $OUT/constrained.json > $OUT/constrained.txt 2>&1; echo "constrained rc $?"; tail -8 $OUT/constrained.txt
