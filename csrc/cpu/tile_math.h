// Dense float tile math for the CPU kernels. Every dimension handed to these functions is a
// multiple of 16 (tiles are zero-padded), so the microkernels have no remainder loops.
//
// Partial tiles are computed at the microkernel's grain: a 4-row x 16-column block of the
// score tile with no allowed entry is neither multiplied nor exponentiated. Its probabilities
// are exactly zero, so skipping it leaves every sum unchanged bit for bit; a causal diagonal or
// a conv window then costs a fraction of a full tile.
#pragma once
#include <cstdint>

namespace vilg::cpu {

constexpr int kMaxBlock = 128;

// Which 4x16 blocks of a [rows x cols] score tile hold an allowed entry. Bit j of rows[i]:
// query rows 4i..4i+3 x key columns 16j..16j+15. Bit i of cols[j]: key columns 4j..4j+3 x
// query rows 16i..16i+15 (the transposed grain, for the products with P^T and dS^T).
struct Occupancy {
  uint32_t rows[kMaxBlock / 4];
  uint32_t cols[kMaxBlock / 4];
};
void occupancy(const uint64_t* rowmask, int words, int rows, int cols, Occupancy& occ);

// C[m x n] = A[m x k] * B[k x n] on the 4x16 blocks of C set in `blocks` (rows[] form; null:
// all of them); the other blocks of C are left as they were.
void gemm_nn_blocks(int m, int n, int k, const float* A, int lda, const float* B, int ldb,
                    float* C, int ldc, const uint32_t* blocks);
// C[m x n] += A[m x k] * B[k x n], skipping the 4x16 blocks of A that are clear in `blocks`.
void gemm_nn_ksparse(int m, int n, int k, const float* A, int lda, const float* B, int ldb,
                     float* C, int ldc, const uint32_t* blocks);
// C[m x n] += A[k x m]^T * B[k x n], skipping the 16x4 blocks of A clear in `blocks` (cols[]).
void gemm_tn_ksparse(int m, int n, int k, const float* A, int lda, const float* B, int ldb,
                     float* C, int ldc, const uint32_t* blocks);

// C[m x n] += A[m x k] * B[k x n]   (row-major, leading dims given)
void gemm_nn(int m, int n, int k, const float* A, int lda, const float* B, int ldb, float* C,
             int ldc);
// C[m x n] += A[k x m]^T * B[k x n]
void gemm_tn(int m, int n, int k, const float* A, int lda, const float* B, int ldb, float* C,
             int ldc);

// One online-softmax step of the forward pass over a [rows x cols] score tile S (already
// scaled). rowmask (nullable): `words` 64-bit words per row, bit set = allowed. Updates the
// running max m and sum l, rescales O [rows x dp] and turns S into the probabilities P.
// blocks (nullable, with rowmask): S's clear 4x16 blocks are not read and become zeros.
void softmax_step(float* S, int rows, int cols, const uint64_t* rowmask, int words, float* m,
                  float* l, float* O, int dp, const uint32_t* blocks = nullptr);

// Score modifiers of one tile for one (sample, head): soft-capping (softcap > 0) and ALiBi
// (kpos non-null): the query rows' and key columns' sequence positions, and the slope.
struct TileMods {
  float softcap = 0.f;
  float slope = 0.f;
  const float* qpos = nullptr;  // [rows]
  const float* kpos = nullptr;  // [cols]; null: ALiBi off
};

// S = softcap * tanh(S / softcap), then S -= slope * |qpos - kpos|, on the 4x16 blocks set in
// `blocks` (null: all). T (nullable, leading dim cols) receives tanh(S / softcap) for the
// backward. Masking comes after (it overwrites masked entries).
void modify_scores(float* S, int rows, int cols, const TileMods& mods, float* T,
                   const uint32_t* blocks = nullptr);

// Backward through the soft-cap: dS *= 1 - T^2 on the blocks set in `blocks` (null: all).
void softcap_grad(float* dS, const float* T, int rows, int cols,
                  const uint32_t* blocks = nullptr);

// Backward: P = exp(S - lse) with masked entries and empty rows (lse = -inf) set to 0, in place.
void probs_from_lse(float* S, int rows, int cols, const uint64_t* rowmask, int words,
                    const float* lse, const uint32_t* blocks = nullptr);

// Backward: dS = P * (dP - delta), in place over dP (zeros in the clear blocks).
void dscores(float* dP, const float* P, int rows, int cols, const float* delta,
             const uint32_t* blocks = nullptr);

}  // namespace vilg::cpu
