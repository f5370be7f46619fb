// Building blocks for symmetric matrices on the CPU: a symmetric rank-k update
// of one triangle (through GEMMs on views, so MKL does the arithmetic) and the
// mirror of the upper triangle into the lower one.
#pragma once

#include <ATen/ATen.h>

namespace kfac_ext::cpu {

// Upper triangle (diagonal included) of c <- beta*c + alpha * a^T a, for a
// (k, n) view with one unit stride and c an (n, n) view with unit column
// stride. The strictly lower triangle of c is left in an unspecified state
// (call mirror_upper_to_lower afterwards). beta == 0 ignores c (as addmm).
void syrk_upper(at::Tensor c, const at::Tensor& a, double alpha, double beta);

// c[i][j] = c[j][i] for i > j; c is an (n, n) view with any strides.
void mirror_upper_to_lower(at::Tensor c);

}  // namespace kfac_ext::cpu
