"""How much does the CUDA emulation catch? Injects typical kernel bugs, one at a time, into a
temporary copy of csrc/ (a barrier removed, an off-by-one bound, a swapped fragment index, a
dropped mask or bounds check, a wrong shuffle lane, a wrong launch configuration, ...), runs the
family's emulation harness (tests/cuda_emulation) on it, and reports per kernel family the share
of mutants caught. A mutant is caught by the first of these stages that fails: the quick set
(CI's default run; for attention a subset of it, ATT_RUNS), the full set, the quick set under
AddressSanitizer + UBSan (slow set). Harnesses stop at their first failing case here.

    python scripts/mutation_test.py [--jobs 2] [--family vq] [--only ID ...]
        [--json bench/results/mutation.json] [--md docs/verification-mutation.md]
    python scripts/mutation_test.py --render bench/results/mutation.json   # Markdown only

Each mutant names the exact source text it replaces, so a kernel edit that moves the text makes
the script fail loudly rather than test something else. Survivors are listed with the reason
recorded in EQUIVALENT (a mutant no input can tell apart) or, failing that, as a gap.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import datetime as dt
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EMU = ROOT / "tests" / "cuda_emulation"
sys.path.insert(0, str(EMU))

from emu_build import build, cpu_objects  # noqa: E402


@dataclass
class Mutant:
    id: str
    family: str  # attention fwd | attention bwd | decode | vq | sampling
    file: str  # under csrc/cuda
    find: str
    replace: str
    kind: str
    what: str


def M(id, family, file, kind, what, find, replace):  # noqa: N802 - table shorthand
    return Mutant(id, family, file, find, replace, kind, what)


FWD, BWD = "attention fwd", "attention bwd"
MUTANTS = [
    # ---- attention forward (attention_fwd.cu, the shared tile / mma helpers, the fp32 path)
    M("fwd-barrier-tiles", FWD, "attention_fwd.cu", "barrier removed",
      "no __syncthreads before the tiles of an iteration are read",
      "      __syncthreads();  // this iteration's tiles (and Q) are visible to every warp\n", ""),
    M("fwd-barrier-refill", FWD, "attention_fwd.cu", "barrier removed",
      "no __syncthreads before a buffer is refilled",
      "      __syncthreads();  // every warp is done with buffer `buf` before it is refilled\n",
      ""),
    M("fwd-cp-wait", FWD, "attention_fwd.cu", "cp.async wait",
      "waits for one group too few", "cp_async_wait<1>();", "cp_async_wait<2>();"),
    M("fwd-loop-bound", FWD, "attention_fwd.cu", "off-by-one loop bound",
      "skips the last key tile", "for (int i = 0; i < ne; ++i) {",
      "for (int i = 0; i < ne - 1; ++i) {"),
    M("fwd-frag-b", FWD, "attention_fwd.cu", "swapped fragment index",
      "B registers of Q K^T swapped", "mma16816<T>(s[2 * n2], qf[kk], bf[0], bf[1]);",
      "mma16816<T>(s[2 * n2], qf[kk], bf[1], bf[0]);"),
    M("fwd-frag-p", FWD, "attention_fwd.cu", "swapped fragment index",
      "P fragment: columns of row g+8 swapped",
      "                               pack2<T>(s[2 * kk][2], s[2 * kk][3]),",
      "                               pack2<T>(s[2 * kk][3], s[2 * kk][2]),"),
    M("fwd-mask", FWD, "attention_fwd.cu", "dropped mask",
      "in-tile mask and text padding never applied",
      "      if (entry_masked(ls, mid, kb, keep))\n        mask_scores(",
      "      if (false)\n        mask_scores("),
    M("fwd-empty-row", FWD, "attention_fwd.cu", "dropped guard",
      "no guard for a row without keys in the online softmax",
      "const float base = m_new == -kInf ? 0.f : m_new;", "const float base = m_new;"),
    M("fwd-lse-bound", FWD, "attention_fwd.cu", "dropped bounds check",
      "lse written for rows past the query length", "if (t == 0 && pos < Lq)", "if (t == 0)"),
    M("fwd-grid", FWD, "attention_fwd.cu", "launch configuration",
      "one query tile too few in the grid",
      "const dim3 grid(unsigned(p.ls.num_q_blocks), unsigned(p.heads), unsigned(p.batch));\n"
      "  kernel<<<grid, kThreads, smem, stream>>>(p, vec);\n  check_launch(\"attention forward\");",
      "const dim3 grid(unsigned(p.ls.num_q_blocks - 1), unsigned(p.heads), unsigned(p.batch));\n"
      "  kernel<<<grid, kThreads, smem, stream>>>(p, vec);\n"
      "  check_launch(\"attention forward\");"),
    M("fwd-optin", FWD, "attention_fwd.cu", "launch configuration",
      "no shared-memory opt-in",
      "  check_cuda(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, "
      "smem),\n             \"attention forward: shared memory opt-in\");\n", ""),
    M("fwd-vec-o", FWD, "attention_fwd.cu", "dropped alignment check",
      "16-byte stores of O whatever its alignment", "(aligned16(p.o, p.o_s) ? kVecO : 0u)",
      "kVecO"),
    M("tiles-load-bound", FWD, "attention_tiles.cuh", "off-by-one bounds check",
      "tile loads read one row past the length", "    if (pos < len) {\n      const uint16_t* src",
      "    if (pos <= len) {\n      const uint16_t* src"),
    M("tiles-syncwarp", FWD, "attention_tiles.cuh", "barrier removed",
      "no __syncwarp between staging and reading output rows", "  __syncwarp();\n", ""),
    M("mma-quad-lane", FWD, "mma.cuh", "wrong shuffle lane",
      "quad max reduces with lane ^ 4 instead of lane ^ 2",
      "  return fmaxf(x, __shfl_xor_sync(0xffffffffu, x, 2));",
      "  return fmaxf(x, __shfl_xor_sync(0xffffffffu, x, 4));"),
    M("simt-fwd-rescale", FWD, "attention_simt.cu", "wrong arithmetic",
      "fp32 path: running sum not rescaled at a new maximum", "        l *= alpha;\n", ""),
    M("simt-warp-lane", FWD, "attention_simt.cu", "wrong shuffle lane",
      "fp32 path: warp sum misses lane ^ 16",
      "for (int off = 16; off > 0; off >>= 1) x += __shfl_xor_sync(0xffffffffu, x, off);",
      "for (int off = 8; off > 0; off >>= 1) x += __shfl_xor_sync(0xffffffffu, x, off);"),
    # ---- attention backward (attention_bwd.cu, the fp32 path's dq / dk / dv)
    M("delta-lane", BWD, "attention_bwd.cu", "wrong shuffle lane",
      "delta sums 8 of 16 lanes", "for (int off = 8; off > 0; off >>= 1) acc +=",
      "for (int off = 4; off > 0; off >>= 1) acc +="),
    M("delta-bound", BWD, "attention_bwd.cu", "dropped bounds check",
      "delta written past the rows", "if (row < rows && sub == 0) p.delta[row] = acc;",
      "if (sub == 0) p.delta[row] = acc;"),
    M("dq-barrier", BWD, "attention_bwd.cu", "barrier removed",
      "dq: no __syncthreads before the tiles are read",
      "      __syncthreads();\n      const uint16_t* kt = sK + buf * S::kElems;\n"
      "      const uint16_t* vt = sV + buf * S::kElems;\n\n      // S = Q K^T and dP",
      "      const uint16_t* kt = sK + buf * S::kElems;\n"
      "      const uint16_t* vt = sV + buf * S::kElems;\n\n      // S = Q K^T and dP"),
    M("dq-mask", BWD, "attention_bwd.cu", "dropped mask",
      "dq: probabilities of masked entries not zeroed",
      "const float pr = (w[r] >> c) & 1u ? exp2f(s[j][2 * r + e] * sl2 - base[r]) : 0.f;",
      "const float pr = exp2f(s[j][2 * r + e] * sl2 - base[r]);"),
    M("dq-frag-row", BWD, "attention_bwd.cu", "swapped fragment index",
      "dq: delta of the other fragment row",
      "s[j][2 * r + e] = pr * (dp[j][2 * r + e] - dl[r]);",
      "s[j][2 * r + e] = pr * (dp[j][2 * r + e] - dl[1 - r]);"),
    M("dq-scale", BWD, "attention_bwd.cu", "wrong arithmetic",
      "dq not scaled", "for (int e = 0; e < 4; ++e) dq[j][e] *= p.scale;",
      "for (int e = 0; e < 4; ++e) dq[j][e] *= 1.f;"),
    M("dkdv-ballot-row", BWD, "attention_bwd.cu", "swapped fragment index",
      "dk/dv: key-major mask of row g+8 taken from row g+7", "if (j == g + 8) wt[1] = col;",
      "if (j == g + 7) wt[1] = col;"),
    M("dkdv-gqa", BWD, "attention_bwd.cu", "off-by-one loop bound",
      "dk/dv: only the first q head of a GQA group",
      "const int h0 = hk * p.kv_group, n = ne * p.kv_group;",
      "const int h0 = hk * p.kv_group, n = ne;"),
    M("dkdv-lse-threads", BWD, "attention_bwd.cu", "off-by-one bounds check",
      "dk/dv: the last query's lse / delta not staged", "  if (tid < kTile) {",
      "  if (tid < kTile - 1) {"),
    M("dkdv-barrier", BWD, "attention_bwd.cu", "barrier removed",
      "dk/dv: no __syncthreads before the query-side tiles are read",
      "      __syncthreads();\n      const uint16_t* qt", "      const uint16_t* qt"),
    M("dkdv-qc-bound", BWD, "attention_bwd.cu", "off-by-one loop bound",
      "dk/dv: the last query chunk skipped", "for (int qc = 0; qc < kTile; qc += kQC) {",
      "for (int qc = 0; qc < kTile - kQC; qc += kQC) {"),
    M("dkdv-grid", BWD, "attention_bwd.cu", "launch configuration",
      "dk/dv grid over q heads instead of k/v heads",
      "const dim3 grid(unsigned(p.ls.num_k_blocks), unsigned(kv_heads(p)), unsigned(p.batch));",
      "const dim3 grid(unsigned(p.ls.num_k_blocks), unsigned(p.heads), unsigned(p.batch));"),
    M("dkdv-frag-ds", BWD, "attention_bwd.cu", "swapped fragment index",
      "dk/dv: dS^T fragment columns swapped",
      "                                  pack2<T>(dpt[2 * kq][2], dpt[2 * kq][3]),",
      "                                  pack2<T>(dpt[2 * kq][3], dpt[2 * kq][2]),"),
    M("simt-dq-empty", BWD, "attention_simt.cu", "dropped guard",
      "fp32 dq: rows without keys not skipped",
      "const int e_end = lse == -kInf ? ls.q_ptr[qb] : ls.q_ptr[qb + 1];",
      "const int e_end = ls.q_ptr[qb + 1];"),
    M("simt-dkdv-group", BWD, "attention_simt.cu", "off-by-one loop bound",
      "fp32 dk/dv: last q head of the group skipped",
      "for (int h = hk * p.kv_group; h < (hk + 1) * p.kv_group; ++h) {",
      "for (int h = hk * p.kv_group; h < (hk + 1) * p.kv_group - 1; ++h) {"),
    # ---- decode (decode.cu)
    M("dec-barrier", "decode", "decode.cu", "barrier removed",
      "warps' partials read before every warp wrote them",
      "  __syncthreads();\n\n  float M = -INFINITY;", "\n  float M = -INFINITY;"),
    M("dec-split-end", "decode", "decode.cu", "off-by-one loop bound",
      "a split stops one key early", "const int ke = min(span.count, kb + per);",
      "const int ke = min(span.count, kb + per - 1);"),
    M("dec-split-per", "decode", "decode.cu", "off-by-one loop bound",
      "keys per split rounded down", "const int per = (span.count + p.splits - 1) / p.splits;",
      "const int per = span.count / p.splits;"),
    M("dec-key-bound", "decode", "decode.cu", "dropped bounds check",
      "reads one key past the split", "ok[u] = j < ke;", "ok[u] = j <= ke;"),
    M("dec-pad-mask", "decode", "decode.cu", "dropped mask",
      "padded text keys not masked", "ok[u] = kp < pad_lo || kp >= pad_hi;", "ok[u] = true;"),
    M("dec-dot-lane", "decode", "decode.cu", "wrong shuffle lane",
      "dot product misses the last butterfly step",
      "for (int o = 1; o < LPK; o <<= 1) s += __shfl_xor_sync(0xffffffffu, s, o);",
      "for (int o = 1; o < LPK / 2; o <<= 1) s += __shfl_xor_sync(0xffffffffu, s, o);"),
    M("dec-merge-lane", "decode", "decode.cu", "wrong shuffle lane",
      "lane groups merged from lane ^ 2 LPK", "for (int o = LPK; o < 32; o <<= 1) {",
      "for (int o = LPK * 2; o < 32; o <<= 1) {"),
    M("dec-merge-swap", "decode", "decode.cu", "swapped index",
      "merge weights swapped", "const float a = rescale(m, mn), c = rescale(mo, mn);",
      "const float a = rescale(mo, mn), c = rescale(m, mn);"),
    M("dec-unroll-index", "decode", "decode.cu", "wrong index",
      "second unrolled key from the wrong stride", "const int j = base + u * NWARPS * KPW + sg;",
      "const int j = base + u * KPW + sg;"),
    M("dec-smem-index", "decode", "decode.cu", "swapped fragment index",
      "accumulator slice stored vector-major",
      "s_acc[warp][(lid + e * LPK) * VEC + i] = acc[e * VEC + i];",
      "s_acc[warp][(lid * EPL + e) * VEC + i] = acc[e * VEC + i];"),
    M("dec-writer-lane", "decode", "decode.cu", "wrong lane",
      "warp max / sum written by a lane that does not own them",
      "    if (lid == 0) {\n      s_m[warp] = m;", "    if (lid == 1) {\n      s_m[warp] = m;"),
    M("dec-alpha-guard", "decode", "decode.cu", "dropped guard",
      "rescale of an empty lane group not guarded",
      "const float alpha = m == mn ? 1.f : exp2f(m - mn);", "const float alpha = exp2f(m - mn);"),
    M("dec-text-clamp", "decode", "decode.cu", "dropped bounds check",
      "text_lens not clamped", "if (p.text_lens) tv = min(max(p.text_lens[b], 0), p.text_len);",
      "if (p.text_lens) tv = p.text_lens[b];"),
    M("comb-splits", "decode", "decode.cu", "off-by-one loop bound",
      "combine ignores the last split's maximum",
      "for (int s = 0; s < p.splits; ++s) M = fmaxf(M, part[s * (D + 2)]);",
      "for (int s = 0; s < p.splits - 1; ++s) M = fmaxf(M, part[s * (D + 2)]);"),
    M("comb-offset", "decode", "decode.cu", "wrong index",
      "combine reads the partial one float early",
      "v += part[s * (D + 2) + 2 + d] * rescale(part[s * (D + 2)], M);",
      "v += part[s * (D + 2) + 1 + d] * rescale(part[s * (D + 2)], M);"),
    M("dec-launch-combine", "decode", "decode.cu", "launch configuration",
      "no combine launch for two splits", "  if (p.splits > 1) {\n    decode_combine_kernel",
      "  if (p.splits > 2) {\n    decode_combine_kernel"),
    M("dec-workspace", "decode", "decode.cu", "launch configuration",
      "workspace one float short per split",
      "return splits > 1 ? int64_t(batch) * heads * splits * (head_dim + 2) : 0;",
      "return splits > 1 ? int64_t(batch) * heads * splits * (head_dim + 1) : 0;"),
    # ---- VQ (vq.cu)
    M("vq-barrier-read", "vq", "vq.cu", "barrier removed",
      "mma quantize: no __syncthreads before a chunk is read",
      "    __syncthreads();\n    mma_chunk<T>", "    mma_chunk<T>"),
    M("vq-barrier-refill", "vq", "vq.cu", "barrier removed",
      "mma quantize: no __syncthreads before a buffer is refilled",
      "mma_chunk<T>(sA[it & 1], sB[it & 1], acc, wm, wn, lane);\n    __syncthreads();",
      "mma_chunk<T>(sA[it & 1], sB[it & 1], acc, wm, wn, lane);"),
    M("vq-cp-wait", "vq", "vq.cu", "cp.async wait", "waits for one group too few",
      "    cp_async_wait<1>();\n    __syncthreads();",
      "    cp_async_wait<2>();\n    __syncthreads();"),
    M("vq-row-bound", "vq", "vq.cu", "dropped bounds check",
      "cp.async tile loads without the row bound",
      "const bool ok = gr < nrows && k0 + kc < D;", "const bool ok = k0 + kc < D;"),
    M("vq-code-bound", "vq", "vq.cu", "off-by-one bounds check",
      "mma quantize scores one code past K",
      "          if (c < K) {\n            const float norm = __ldg(cn + c);\n#pragma unroll\n"
      "            for (int mi",
      "          if (c <= K) {\n            const float norm = __ldg(cn + c);\n#pragma unroll\n"
      "            for (int mi"),
    M("vq-tf32-frag", "vq", "vq.cu", "swapped fragment index",
      "tf32 A registers 1 and 2 swapped",
      "        split_tf32(a[8 * SK], ab[mi][1], as[mi][1]);\n"
      "        split_tf32(a[4], ab[mi][2], as[mi][2]);",
      "        split_tf32(a[8 * SK], ab[mi][2], as[mi][2]);\n"
      "        split_tf32(a[4], ab[mi][1], as[mi][1]);"),
    M("vq-tf32-term", "vq", "vq.cu", "dropped term",
      "split-TF32 without the small * big term",
      "          mma_1688_tf32(acc[mi][ni], as[mi], bb[ni]);\n", ""),
    M("vq-ldsm-b", "vq", "vq.cu", "wrong fragment address",
      "ldmatrix B rows from lane bit 4 instead of 3", "ks * 16 + ((lane >> 3) & 1) * 8);",
      "ks * 16 + ((lane >> 4) & 1) * 8);"),
    M("vq-tie-mma", "vq", "vq.cu", "wrong comparison",
      "mma quantize: ties to the highest index",
      "                if (s < best[r]) {", "                if (s <= best[r]) {"),
    M("vq-quad-lane", "vq", "vq.cu", "wrong shuffle lane",
      "row minimum over lanes ^ 1, ^ 4", "key = shfl_min(key, 2);", "key = shfl_min(key, 4);"),
    M("vq-simt-lane", "vq", "vq.cu", "wrong shuffle lane",
      "SIMT quantize: minimum over 8 of 16 columns",
      "for (int m = 1; m < 16; m <<= 1) key = shfl_min(key, m);",
      "for (int m = 1; m < 8; m <<= 1) key = shfl_min(key, m);"),
    M("vq-simt-stash", "vq", "vq.cu", "wrong buffer",
      "SIMT quantize: prefetch stashed into the buffer being read",
      "      stash(sX[st ^ 1], rx);", "      stash(sX[st], rx);"),
    M("vq-simt-tie", "vq", "vq.cu", "wrong comparison",
      "SIMT quantize: ties to the highest index",
      "            if (s < best[i]) {", "            if (s <= best[i]) {"),
    M("vq-norm-lane", "vq", "vq.cu", "wrong shuffle lane",
      "code norms miss lane ^ 1",
      "for (int m = 16; m > 0; m >>= 1) s += __shfl_xor_sync(0xffffffffu, s, m);",
      "for (int m = 16; m > 1; m >>= 1) s += __shfl_xor_sync(0xffffffffu, s, m);"),
    M("vq-unpack-grid", "vq", "vq.cu", "launch configuration",
      "index unpack grid rounded down", "const int64_t fin = (p.n + THREADS - 1) / THREADS;",
      "const int64_t fin = p.n / THREADS;"),
    M("vq-tiles", "vq", "vq.cu", "launch configuration",
      "code tiles rounded down", "  const int ntiles = (p.k + BN - 1) / BN;\n  // Split",
      "  const int ntiles = p.k / BN;\n  // Split"),
    M("vq-vec-align", "vq", "vq.cu", "dropped alignment check",
      "cp.async path whatever x's alignment",
      "aligned16(p.x) && aligned16(p.codebook);", "aligned16(p.codebook);"),
    M("vq-embed-bound", "vq", "vq.cu", "off-by-one bounds check",
      "embed accepts index K", "if (c < 0 || c >= K) {\n      out[e] = U{};",
      "if (c < 0 || c > K) {\n      out[e] = U{};"),
    M("vq-embed-err", "vq", "vq.cu", "wrong lane",
      "embed records a bad index once per unit", "if (u == 0) record_bad(err, c);",
      "record_bad(err, c);"),
    M("vq-stats-stride", "vq", "vq.cu", "wrong index",
      "code stats grid stride in half warps",
      "const int64_t warps = (int64_t(gridDim.x) * blockDim.x) >> 5;",
      "const int64_t warps = (int64_t(gridDim.x) * blockDim.x) >> 4;"),
    # ---- sampling (sampling.cu)
    M("smp-barrier-sum", "sampling", "sampling.cu", "barrier removed",
      "block sum overwrites partials still being read",
      "  __syncthreads();  // sh.red may still be read from a previous call\n", ""),
    M("smp-barrier-pass", "sampling", "sampling.cu", "barrier removed",
      "radix pass clears the histogram while it is read",
      "    __syncthreads();  // previous readers of hist / prefix are done\n", ""),
    M("smp-barrier-zero", "sampling", "sampling.cu", "barrier removed",
      "histogram filled before it is zeroed",
      "for (int i = tid; i < 256; i += THREADS) sh.hist[i] = 0;\n    __syncthreads();",
      "for (int i = tid; i < 256; i += THREADS) sh.hist[i] = 0;"),
    M("smp-barrier-scan", "sampling", "sampling.cu", "barrier removed",
      "draw: warp totals read before they are written",
      "  if (lane == 31) sh.red[warp] = incl;\n  __syncthreads();",
      "  if (lane == 31) sh.red[warp] = incl;"),
    M("smp-warp-lane", "sampling", "sampling.cu", "wrong shuffle lane",
      "warp sum misses lane ^ 1",
      "for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);",
      "for (int o = 16; o > 1; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);"),
    M("smp-scan-lane", "sampling", "sampling.cu", "wrong shuffle lane",
      "radix digit scan: lane o does not add lane 0",
      "        if (lane >= o) incl += u;\n      }\n      const unsigned hit",
      "        if (lane > o) incl += u;\n      }\n      const unsigned hit"),
    M("smp-digit-loop", "sampling", "sampling.cu", "off-by-one loop bound",
      "a lane sums 7 of its 8 digits",
      "for (int j = 0; j < 8; ++j) mine += sh.hist[255 - 8 * lane - j];",
      "for (int j = 0; j < 7; ++j) mine += sh.hist[255 - 8 * lane - j];"),
    M("smp-digit-cmp", "sampling", "sampling.cu", "wrong comparison",
      "digit search needs strictly more than the target", "if (cum + hd >= want) {",
      "if (cum + hd > want) {"),
    M("smp-ffs", "sampling", "sampling.cu", "wrong lane", "first hit lane off by one",
      "const int first = hit ? __ffs(hit) - 1 : 31;", "const int first = hit ? __ffs(hit) : 31;"),
    M("smp-argmax-tie", "sampling", "sampling.cu", "wrong comparison",
      "warp argmax: ties to the highest index",
      "    if (ov > bv || (ov == bv && oi < bi)) {\n      bv = ov;",
      "    if (ov > bv || (ov == bv && oi > bi)) {\n      bv = ov;"),
    M("smp-topk-1", "sampling", "sampling.cu", "off-by-one bound", "top-k = 1 ignored",
      "if (p.top_k > 0 && p.top_k < V) {", "if (p.top_k > 1 && p.top_k < V) {"),
    M("smp-kept-tie", "sampling", "sampling.cu", "wrong comparison",
      "entries equal to the threshold dropped",
      "return z >= tau ? ull(sampler_weight(z, m)) : 0ull;",
      "return z > tau ? ull(sampler_weight(z, m)) : 0ull;"),
    M("smp-chunk-end", "sampling", "sampling.cu", "dropped bounds check",
      "draw chunks run past the vocabulary",
      "const int64_t lo = tid * chunk, hi = lo + chunk < V ? lo + chunk : V;",
      "const int64_t lo = tid * chunk, hi = lo + chunk;"),
    M("smp-draw-cmp", "sampling", "sampling.cu", "off-by-one comparison",
      "the thread whose chunk starts at the target does not draw",
      "if (mine > 0 && excl <= target && target < excl + mine) {",
      "if (mine > 0 && excl < target && target < excl + mine) {"),
    M("smp-excl-scan", "sampling", "sampling.cu", "off-by-one loop bound",
      "exclusive scan includes the own warp", "for (int w = 0; w < warp; ++w) before += sh.red[w];",
      "for (int w = 0; w <= warp; ++w) before += sh.red[w];"),
    M("smp-radix-mask", "sampling", "sampling.cu", "wrong mask", "radix prefix mask loses a bit",
      "mask |= 255u << shift;", "mask |= 127u << shift;"),
    M("smp-budget", "sampling", "sampling.cu", "launch configuration",
      "staging budget ignores the static shared memory",
      "const int64_t budget = int64_t(optin) - int64_t(sizeof(Shared)) - 1024;",
      "const int64_t budget = int64_t(optin);"),
    M("smp-optin", "sampling", "sampling.cu", "launch configuration",
      "no shared-memory opt-in above 48 KiB", "    if (bytes > 48 * 1024)\n      check_cuda(",
      "    if (false)\n      check_cuda("),
    M("smp-greedy-writer", "sampling", "sampling.cu", "wrong lane",
      "greedy token written by thread 1", "if (tid == 0) p.out[row] = sh.best;",
      "if (tid == 1) p.out[row] = sh.best;"),
]

# Survivors no input can distinguish from the original (checked by reading the code).
EQUIVALENT = {
    "smp-greedy-writer": "thread 1 holds the same block-wide sh.best as thread 0; any one "
    "writer is correct",
    "smp-barrier-sum": "redundant barrier in this kernel: between one block_sum's reads of "
    "sh.red and the next write of sh.red lie a radix select's or the draw's __syncthreads",
    "smp-barrier-pass": "redundant barrier in this kernel: the last readers of sh.hist (warp 0's "
    "digit scan) and of sh.prefix finish before barriers that precede the next pass's writes",
    "dec-writer-lane": "after the butterfly merge every lane of the warp holds the same max "
    "and sum, so lane 1 writes what lane 0 would",
}

# Survivors that are not equivalent but that no practical case reaches.
UNREACHED = {
    "smp-draw-cmp": "differs only when the draw lands exactly on the first weight of a "
    "thread's chunk, a chance of about 2^-40 per draw with 2^40-scaled weights",
}

# Survivors that a missing case or check lets through (open gaps, with what would close them).
GAPS = {
    "vq-barrier-refill": "gap: emulated cp.async lands at wait_group, and static __shared__ "
    "bytes are not shadow-checked, so a refill racing with slower warps' reads is not seen "
    "(landing some copies at issue would show it)",
    "vq-tf32-term": "gap: the 'nearest code' tolerance (3e-6 (|x|^2 + 2|c|^2) sqrt(d)) admits "
    "the accuracy of two-term split TF32; an fp32-tight check of the fast path would not",
    "vq-stats-stride": "gap: the grid-stride loop never takes a second step at the harness's "
    "sizes (a smaller emulated SM count would make it)",
}

# Attention runs: (dtype, memory mode, padded, layouts); the harness checks fwd and bwd.
ATT_RUNS = [
    ("bf16", 0, 1, ["random_40", "holes_200", "gqa_chunk_window_199_130"]),
    ("f16", 2, 1, ["gqa_causal_107"]),
    ("f32", 1, 1, ["random_40", "chunk_causal_203_70"]),
]


def stage_cmds(family: str, exe: Path, lay: Path, stage: str) -> list[list[str]]:
    if family == "attention":
        runs = ATT_RUNS if stage != "full" else [
            (d, m, 1, ["row_text2image_odd", "column_image2text_even", "chunk_window_155_41"])
            for d, m in (("bf16", 0), ("f16", 1), ("f32", 2))
        ]
        return [[str(exe), str(lay), d, "7", str(m), str(p), *names] for d, m, p, names in runs]
    return [[str(exe), "full" if stage == "full" else "quick"]]


def harness_family(m: Mutant) -> str:
    return "attention" if m.family.startswith("attention") else m.family


def run_stage(family, exe, lay, stage, timeout) -> tuple[bool, str]:
    for cmd in stage_cmds(family, exe, lay, stage):
        try:
            r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                               env=os.environ | {"VILG_EMU_FAIL_FAST": "1"})
        except subprocess.TimeoutExpired:
            return False, "timeout"
        if r.returncode != 0 or not r.stdout.rstrip().endswith("all ok"):
            lines = [ln for ln in (r.stdout + r.stderr).splitlines() if "ok" not in ln[-3:]]
            return False, " | ".join(lines[-3:])[-300:] or f"exit {r.returncode}"
    return True, ""


class Worker:
    """A private copy of csrc/ (mutated in place, restored after each mutant)."""

    def __init__(self, root: Path):
        self.root = root
        shutil.copytree(ROOT / "csrc", root / "csrc")
        self.objs = {}

    def run(self, m: Mutant, lay: Path, timeout: int) -> dict:
        fam = harness_family(m)
        path = self.root / "csrc" / "cuda" / m.file
        orig = path.read_text()
        if orig.count(m.find) != 1:
            raise SystemExit(f"mutant {m.id}: its source text occurs {orig.count(m.find)} times")
        t0 = time.time()
        res = {"id": m.id, "family": m.family, "file": m.file, "kind": m.kind, "what": m.what}
        try:
            path.write_text(orig.replace(m.find, m.replace))
            if fam not in self.objs:
                self.objs[fam] = cpu_objects(fam, self.root / f"obj_{fam}")
            out = self.root / f"build_{fam}"
            try:
                exe = build(fam, out, csrc=self.root / "csrc", cpu_objects=self.objs[fam],
                            opt="-O1")
            except subprocess.CalledProcessError:
                res.update(outcome="invalid", caught_by=None, detail="does not compile")
                return res
            res.update(outcome="survived", caught_by=None, detail="")
            for stage in ("quick", "full", "sanitized"):
                if stage == "sanitized":
                    exe = build(fam, out, csrc=self.root / "csrc", sanitize=True, opt="-O1")
                ok, detail = run_stage(fam, exe, lay, stage, timeout)
                if not ok:
                    res.update(outcome="caught", caught_by=stage, detail=detail)
                    break
            if res["outcome"] == "survived":
                res["reason"] = EQUIVALENT.get(m.id) or UNREACHED.get(m.id) or GAPS.get(
                    m.id, "gap: no case distinguishes it")
                res["equivalent"] = m.id in EQUIVALENT
        finally:
            path.write_text(orig)
            res["seconds"] = round(time.time() - t0, 1)
        return res


def git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True).stdout.strip()


def machine() -> str:
    cpu = ""
    try:
        for ln in Path("/proc/cpuinfo").read_text().splitlines():
            if ln.startswith("model name"):
                cpu = ln.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{platform.node()} ({cpu or platform.processor()}, {os.cpu_count()} cores)"


def summarize(results: list[dict]) -> dict:
    fams = {}
    for r in results:
        f = fams.setdefault(r["family"], {"mutants": 0, "caught": 0, "survived": 0,
                                          "equivalent": 0, "invalid": 0, "caught_quick": 0,
                                          "not_run": 0})
        f["mutants"] += 1
        if r["outcome"] == "caught":
            f["caught"] += 1
            f["caught_quick"] += r["caught_by"] == "quick"
        elif r["outcome"] == "invalid":
            f["invalid"] += 1
        elif r["outcome"] == "not run":
            f["not_run"] += 1
        else:
            f["survived"] += 1
            f["equivalent"] += bool(r.get("equivalent"))
    for f in fams.values():
        valid = f["mutants"] - f["invalid"] - f["not_run"]
        f["score"] = round(f["caught"] / valid, 3) if valid else None
        nonequiv = valid - f["equivalent"]
        f["score_non_equivalent"] = round(f["caught"] / nonequiv, 3) if nonequiv else None
        f["score_quick"] = round(f["caught_quick"] / valid, 3) if valid else None
    return fams


def render(report: dict) -> str:
    def pct(x):
        return "-" if x is None else f"{100 * x:.0f}%"

    fam_rows = "\n".join(
        f"| {name} | {f['mutants']} | {f['caught']} ({f['caught_quick']} by the quick set) | "
        f"{f['survived']} ({f['equivalent']} equivalent) | {f['invalid']} | {f['not_run']} | "
        f"{pct(f['score'])} | {pct(f['score_non_equivalent'])} |"
        for name, f in report["families"].items()
    )
    rows = "\n".join(
        f"| `{r['id']}` | {r['family']} | {r['kind']} | {r['what']} | "
        f"{r['outcome'] + (' (' + r['caught_by'] + ')' if r.get('caught_by') else '')} |"
        for r in report["mutants"]
    )
    surv = [r for r in report["mutants"] if r["outcome"] == "survived"]
    reruns = "".join(
        f" Re-run at commit `{r['commit']}` ({r['date']}, {r['seconds']:.0f} s): "
        + ", ".join(f"`{i}`" for i in r["ids"]) + "."
        for r in report.get("reruns", [])
    )
    surv_txt = "\n".join(f"- `{r['id']}` ({r['what']}): {r['reason']}" for r in surv) or "none"
    return f"""# Verification: mutation testing of the CUDA kernels

Generated by `python scripts/mutation_test.py` from
`{report['json']}`; do not edit by hand.

No GPU has run vilg's CUDA kernels yet. Their source runs, unchanged, on a CPU emulation of
the warp instructions (`csrc/cuda/emulate.cuh`, `emulate_api.cuh`; the harnesses in
`tests/cuda_emulation/`) through the real host launchers, against the CPU kernels and float64
references. This page measures how much that emulation catches: each mutant below is one
typical kernel bug injected into a copy of the sources, and it counts as caught when a harness
fails on it, first the quick set that CI's default `python -m pytest -q` runs, then the full
set, then the quick set under AddressSanitizer + UBSan (both in the slow set).

Commit `{report['commit']}`, {report['date']}, {report['machine']}, {report['jobs']} parallel
jobs, load average {report['load_before']} before and {report['load_after']} after,
{report['seconds']:.0f} s in all.{reruns}

| family | mutants | caught | survived | invalid | not run | score | score without equivalent |
|---|---|---|---|---|---|---|---|
{fam_rows}

## Survivors

{surv_txt}

An equivalent mutant is one no input can tell apart from the original; the score without them
is the share of real bugs caught. What the emulation cannot see at all (timing, register
spills, the SASS the wrappers compile to, device limits other than shared memory and grid
sizes) is not in this table.

## What the emulation checks

* Every CUDA thread is a fiber; fibers yield only at barriers and warp collectives, in a seeded
  random order per round (and blocks in a random order), so a missing barrier reads poison or
  stale data. Shared memory starts as NaN bytes in every block. The attention kernels' dynamic
  shared memory is shadow-checked on every access (reads of unwritten or in-flight cp.async
  bytes, unsynchronised read/write pairs); the other families' static `__shared__` variables
  get the poison and the schedule, not the shadow checks.
* Shuffles (xor, up; 32 and 64 bit), ballots, `ldmatrix`, `mma.sync` m16n8k16 f16 / bf16 and
  m16n8k8 tf32 are computed from all 32 lanes' registers with the PTX ISA fragment layouts;
  cp.async (with zero-fill) lands only at `wait_group`; a thread may not exit with copies in
  flight; 64-bit and float atomics; `__ldg`, cp.async sources, 16-byte stores and atomics check
  their alignment; plain vector accesses are checked by UBSan in the sanitized build.
* The host launchers run as written (`tests/cuda_emulation/translate.py` turns `<<<...>>>` into
  an emulated launch): a grid or block the hardware refuses, dynamic shared memory above
  48 KiB without the opt-in, or static + dynamic shared memory above the device's opt-in limit
  fails the launch as on a GPU (the emulated device is an H100: 132 SMs, 227 KiB).

## Run it

    python -m pytest -q tests/test_cuda_emulation.py tests/test_cuda_emulation_kernels.py
    python -m pytest -q -m slow tests/test_cuda_emulation.py tests/test_cuda_emulation_kernels.py
    python scripts/mutation_test.py --jobs 2      # rewrites this page and its JSON

## Mutants

| id | family | kind | bug | outcome |
|---|---|---|---|---|
{rows}
"""


def from_log(logs: list[Path], a) -> dict:
    """The report of runs from their printed lines `id outcome [stage] seconds detail`."""
    byid = {m.id: m for m in MUTANTS}
    results, seen = [], set()
    for ln in "\n".join(x.read_text() for x in logs).splitlines():
        parts = ln.split(None, 3)
        if len(parts) < 3 or parts[0] not in byid or parts[1] not in ("caught", "survived",
                                                                      "invalid"):
            continue
        m, outcome = byid[parts[0]], parts[1]
        stage = parts[2] if outcome == "caught" else None
        rest = ln.split(None, 3 if stage else 2)[-1]
        secs, _, detail = rest.partition("s ")
        r = {"id": m.id, "family": m.family, "file": m.file, "kind": m.kind, "what": m.what,
             "outcome": outcome, "caught_by": stage, "detail": detail.strip(),
             "seconds": float(secs.rstrip("s"))}
        if outcome == "survived":
            r["reason"] = EQUIVALENT.get(m.id) or UNREACHED.get(m.id) or GAPS.get(
                m.id, "gap: no case distinguishes it")
            r["equivalent"] = m.id in EQUIVALENT
        results = [x for x in results if x["id"] != m.id] + [r]  # a later run wins
        seen.add(m.id)
    for m in MUTANTS:
        if m.id not in seen:
            results.append({"id": m.id, "family": m.family, "file": m.file, "kind": m.kind,
                            "what": m.what, "outcome": "not run", "caught_by": None,
                            "seconds": 0})
    order = {m.id: i for i, m in enumerate(MUTANTS)}
    results.sort(key=lambda r: order[r["id"]])
    st = max(logs, key=lambda x: x.stat().st_mtime).stat()
    return {
        "commit": git("rev-parse", "--short", "HEAD"),
        "date": dt.datetime.fromtimestamp(st.st_mtime, dt.timezone.utc).strftime(
            "%Y-%m-%d %H:%M UTC"),
        "machine": machine(), "jobs": a.jobs, "load_before": "not recorded (rebuilt from log)",
        "load_after": [round(x, 1) for x in os.getloadavg()],
        "seconds": sum(r["seconds"] for r in results) / max(1, a.jobs),
        "json": a.json, "families": summarize(results), "mutants": results,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--family", action="append")
    ap.add_argument("--only", nargs="*")
    ap.add_argument("--timeout", type=int, default=300)
    ap.add_argument("--json", default="bench/results/mutation.json")
    ap.add_argument("--md", default="docs/verification-mutation.md")
    ap.add_argument("--render", help="only render this JSON report into --md")
    ap.add_argument("--from-log", nargs="+", help="rebuild the report from the lines runs "
                    "printed (interrupted runs: missing mutants are listed as not run)")
    ap.add_argument("--update", action="store_true",
                    help="merge the mutants run (--only / --family) into the --json report")
    a = ap.parse_args()
    if a.render:
        report = json.loads(Path(a.render).read_text())
        (ROOT / a.md).write_text(render(report))
        return
    if a.from_log:
        report = from_log([Path(x) for x in a.from_log], a)
        (ROOT / a.json).write_text(json.dumps(report, indent=1) + "\n")
        (ROOT / a.md).write_text(render(report))
        return
    todo = [m for m in MUTANTS if (not a.family or m.family in a.family or
                                   harness_family(m) in a.family)
            and (not a.only or m.id in a.only)]
    assert len({m.id for m in MUTANTS}) == len(MUTANTS), "duplicate mutant ids"
    if a.family:  # in the order asked for
        rank = {f: i for i, f in enumerate(a.family)}
        todo.sort(key=lambda m: rank.get(m.family, rank.get(harness_family(m), 0)))
    load_before = os.getloadavg()
    t0 = time.time()
    results = []
    with tempfile.TemporaryDirectory(prefix="vilg_mut_") as tmp:
        tmp = Path(tmp)
        from layouts import write_all

        lay = tmp / "layouts"
        lay.mkdir()
        write_all(lay)
        workers = [Worker(tmp / f"w{i}") for i in range(a.jobs)]
        free = list(workers)
        with cf.ThreadPoolExecutor(a.jobs) as ex:
            futs = {}
            for m in todo:
                while not free:
                    done, _ = cf.wait(futs, return_when=cf.FIRST_COMPLETED)
                    for d in done:
                        results.append(d.result())
                        free.append(futs.pop(d))
                        r = results[-1]
                        print(f"{r['id']:<22} {r['outcome']:<9} {r.get('caught_by') or ''}"
                              f" {r['seconds']}s {r.get('detail', '')[:110]}", flush=True)
                w = free.pop()
                futs[ex.submit(w.run, m, lay, a.timeout)] = w
            for d in cf.as_completed(futs):
                results.append(d.result())
                r = results[-1]
                print(f"{r['id']:<22} {r['outcome']:<9} {r.get('caught_by') or ''}"
                      f" {r['seconds']}s {r.get('detail', '')[:110]}", flush=True)
    order = {m.id: i for i, m in enumerate(MUTANTS)}
    dirty = " (dirty)" if git("status", "--porcelain", "csrc", "tests/cuda_emulation") else ""
    results.sort(key=lambda r: order[r["id"]])
    report = {
        "commit": git("rev-parse", "--short", "HEAD") + dirty,
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine(),
        "jobs": a.jobs,
        "load_before": [round(x, 1) for x in load_before],
        "load_after": [round(x, 1) for x in os.getloadavg()],
        "seconds": round(time.time() - t0, 1),
        "json": a.json,
        "families": summarize(results),
        "mutants": results,
    }
    for name, f in report["families"].items():
        print(f"{name:<14} {f['caught']}/{f['mutants'] - f['invalid']} caught "
              f"({f['caught_quick']} by the quick set), {f['survived']} survived "
              f"({f['equivalent']} equivalent)")
    if a.update:  # re-run mutants replace their entries; the rerun is recorded
        old = json.loads((ROOT / a.json).read_text())
        new = {r["id"]: r for r in results}
        merged = [new.pop(r["id"], r) for r in old["mutants"]] + list(new.values())
        merged.sort(key=lambda r: order.get(r["id"], len(order)))
        old.setdefault("reruns", []).append(
            {k: report[k] for k in ("commit", "date", "load_before", "load_after", "seconds")}
            | {"ids": sorted(r["id"] for r in results)})
        old["mutants"], old["families"] = merged, summarize(merged)
        report = old
    elif a.only or a.family:
        return  # partial runs do not overwrite the committed report
    (ROOT / a.json).parent.mkdir(parents=True, exist_ok=True)
    (ROOT / a.json).write_text(json.dumps(report, indent=1) + "\n")
    (ROOT / a.md).write_text(render(report))


if __name__ == "__main__":
    main()
