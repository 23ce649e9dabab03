# call A (carry .gpu/a; the shipped heads moved out of the tree): the first half of the SmolLM2 GGUF to ~/parts
mkdir -p ~/parts && cp .gpu/a/part00 ~/parts/ && ls -la ~/parts && nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
