// Dense float tile math for the CPU kernels. Every dimension handed to these functions is a
// multiple of 16 (tiles are zero-padded), so the microkernels have no remainder loops.
#pragma once
#include <cstdint>

namespace vilg::cpu {

// C[m x n] += A[m x k] * B[k x n]   (row-major, leading dims given)
void gemm_nn(int m, int n, int k, const float* A, int lda, const float* B, int ldb, float* C,
             int ldc);
// C[m x n] += A[k x m]^T * B[k x n]
void gemm_tn(int m, int n, int k, const float* A, int lda, const float* B, int ldb, float* C,
             int ldc);

// One online-softmax step of the forward pass over a [rows x cols] score tile S (already
// scaled). rowmask (nullable): `words` 64-bit words per row, bit set = allowed. Updates the
// running max m and sum l, rescales O [rows x dp] and turns S into the probabilities P.
void softmax_step(float* S, int rows, int cols, const uint64_t* rowmask, int words, float* m,
                  float* l, float* O, int dp);

// Backward: P = exp(S - lse) with masked entries and empty rows (lse = -inf) set to 0, in place.
void probs_from_lse(float* S, int rows, int cols, const uint64_t* rowmask, int words,
                    const float* lse);

// Backward: dS = P * (dP - delta), in place over dP.
void dscores(float* dP, const float* P, int rows, int cols, const float* delta);

}  // namespace vilg::cpu
