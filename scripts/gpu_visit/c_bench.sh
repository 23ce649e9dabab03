# benchmark call C after training (heads back in the tree; carries .gpu/whl, .gpu/d): the new heads at ~/train
source scripts/gpu_env.sh
timeout 150 python -m pytest -q -x tests/gpu/test_eagle_chain.py tests/gpu/test_mlp_greedy_graph.py tests/gpu/test_eagle_catch_up_graph.py > $OUT/gpu_tests.txt 2>&1; echo "gpu tests rc $?"; tail -3 $OUT/gpu_tests.txt
E=${E3:-$HOME/train/eagle3}; M=${ML:-$HOME/train/mlp}
[ -f $M/model.safetensors ] || M=smollm2-135m-instruct-mlp
[ -f $E/model.safetensors ] || E=smollm2-135m-instruct-eagle3
echo "heads: $E $M"
timeout 300 python tests/benchmarks/heads_speed_gpu.py --eagle3 $E --mlp $M --limit 40 --max-tokens 192 --only "ngram k=5,eagle3 k=4,eagle3 k=5,mlp_speculator k=3" --out $OUT/heads_speed.json > $OUT/heads_speed.txt 2>&1; echo "heads rc $?"; grep -v "^\s*$" $OUT/heads_speed.txt | tail -14
timeout 110 python tests/benchmarks/step_cost_gpu.py --only "eagle3 k=5" --torch-head-ops --out $OUT/step_cost.json > $OUT/step_cost.txt 2>&1; echo "step cost rc $?"; grep -E "step|FAILED" $OUT/step_cost.txt | tail -6
