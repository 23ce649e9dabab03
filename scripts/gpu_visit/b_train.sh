# training call B: part00 is in ~/parts (call A); this call carries part01 (.gpu/b), the prompts (.gpu/p), .gpu/whl, .gpu/d;
# the shipped heads are out of the tree
set -o pipefail
cp .gpu/b/part01 ~/parts/
mkdir -p ~/.cache/tokenleap/models/smollm2-135m-instruct ~/.cache/tokenleap/datasets/mtbench
cat ~/parts/part00 ~/parts/part01 > ~/.cache/tokenleap/models/smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf
cp .gpu/d/question.jsonl ~/.cache/tokenleap/datasets/mtbench/
gunzip -c .gpu/p/sharegpt_all_24000.json.gz > ~/prompts.json
source scripts/gpu_env.sh
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
date -u
PROMPTS=~/prompts.json NUM_PROMPTS=${NP:-10000} EPOCHS=${EP:-5} EAGLE_MINUTES=${EM:-2.2} MLP_STEPS=${MS:-3000} FEATURE_CACHE_GB=45 GEN_BATCH=512 GEN_WAVES=${GW-1} \
  timeout ${TT:-480} scripts/train_shipped_heads.sh ~/train > $OUT/train.log 2>&1
echo "train rc $?"; date -u; grep -v "^\s*$" $OUT/train.log | tail -25
for h in eagle3 mlp; do
  [ -f ~/train/$h/model.safetensors ] && split -n 2 -d ~/train/$h/model.safetensors $OUT/${h}_st
done
tar -C ~/train -cf $OUT/head_configs.tar eagle3/config.json mlp/config.json mlp/training.json
ls -la $OUT
