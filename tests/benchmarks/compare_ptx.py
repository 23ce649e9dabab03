"""Compile the few-row linear kernel's variants for sm_90 on any machine (no GPU needed) and compare two
checkouts: the same instructions means a refactor left the GPU code alone.

    python tests/benchmarks/compare_ptx.py OLD/core/src core/src

For each variant (PDL on / off x 1 / 16 rows x store / SwiGLU / RoPE epilogue, SmolLM2's shapes) it prints
"same" when the PTX is byte-identical after dropping comments and debug information; "same instructions,
reordered" when, registers renumbered and lines sorted, the two hold the same instructions: that is NOT proof
(swapping two operands passes it too), so read the diff (``--diff``: the changed lines of each such variant)
and check that it only moves independent instructions and renames registers consistently; else "DIFFERENT".
Exit status 0 only when every variant is "same". Each checkout is compiled in its own process (the kernels
import under the same module names).
"""

from __future__ import annotations

import argparse
import difflib
import json
import re
import subprocess
import sys

VARIANTS = [(pdl, rows, epilogue) for pdl in (False, True) for rows in (1, 16) for epilogue in (0, 1, 2)]

_WORKER = r'''
import json, sys, triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
sys.path.insert(0, sys.argv[1])
from tokenleap.kernels import triton_linear as L
fn = L._small_m_linear_kernel
types = {n: "*bf16" for n in ("x_ptr", "res_ptr", "nw_ptr", "w_ptr", "b_ptr", "y_ptr", "new_res_ptr", "k_cache_ptr",
                              "v_cache_ptr")}
types.update(eps="fp32", pos_ptr="*i64", cs_ptr="*fp32", slot_ptr="*i64")
out = {}
for pdl, rows, ep in json.loads(sys.argv[2]):
    c = dict(K=576, PROLOGUE=1 if ep else 0, HAS_RESIDUAL=bool(ep), HAS_BIAS=ep == 2, EPILOGUE=ep,
             DOT_PRECISION="tf32", ROWS=rows, BLOCK_N=16, BLOCK_K=256, LOG2_BLOCK_K=8, HEAD_DIM=64 if ep == 2 else 0,
             NUM_HEADS=9 if ep == 2 else 0, NUM_KV_HEADS=3 if ep == 2 else 0, PAGE=16 if ep == 2 else 0, PDL=pdl)
    # launcher-side constants of the checkout (names differ between versions): PF_LINES, and the older PF_LINES_USED / ELEM
    c.update({k: v for k, v in dict(PF_LINES=16, PF_LINES_USED=9, ELEM=2).items() if k in fn.arg_names})
    names = fn.arg_names
    sig = {n: ("constexpr" if n in c else types.get(n, "i32")) for n in names}
    src = ASTSource(fn=fn, signature=sig, constexprs={(names.index(k),): v for k, v in c.items()})
    k = triton.compile(src, target=GPUTarget("cuda", 90, 32), options=dict(num_warps=4, num_stages=3, launch_pdl=pdl))
    out[f"{pdl},{rows},{ep}"] = k.asm["ptx"]
print(json.dumps(out))
'''


def code_lines(ptx: str) -> list[str]:
    """The PTX without comments, debug sections and line markers."""
    body = ptx.split(".section\t.debug")[0]
    return [line for line in body.splitlines()
            if line.strip() and not line.strip().startswith("//") and not line.strip().startswith(".loc")
            and not line.strip().startswith(".file") and not re.match(r"\s*\$L__tmp\d+:", line)]


def instructions(lines: list[str]) -> list[str]:
    """Registers renumbered and labels dropped, sorted: the multiset of instructions."""
    return sorted(re.sub(r"%(r|rd|rs|f|fd|p|h|hh)\d+", r"%\1", line) for line in lines if "$L__tmp" not in line)


def compile_all(src_root: str) -> dict[str, str]:
    done = subprocess.run([sys.executable, "-c", _WORKER, src_root, json.dumps(VARIANTS)], capture_output=True,
                          text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("old", help="the older checkout's core/src")
    ap.add_argument("new", help="the newer checkout's core/src")
    ap.add_argument("--diff", action="store_true", help="print the changed lines of variants that are not 'same'")
    args = ap.parse_args()
    old, new = compile_all(args.old), compile_all(args.new)
    worst = 0
    for key in old:
        a, b = code_lines(old[key]), code_lines(new[key])
        changed = [line for line in difflib.unified_diff(a, b, lineterm="", n=0)
                   if line[:1] in "+-" and not line.startswith(("+++", "---"))]
        if a == b:
            verdict = "same"
        elif instructions(a) == instructions(b):
            verdict, worst = f"same instructions, reordered ({len(changed)} lines changed)", max(worst, 1)
        else:
            verdict, worst = "DIFFERENT", 2
        pdl, rows, ep = key.split(",")
        print(f"PDL={pdl:5s} rows={rows:2s} epilogue={ep}: {verdict}")
        if args.diff and a != b:
            print("\n".join(f"    {line}" for line in changed))
    return worst

if __name__ == "__main__":
    raise SystemExit(main())
