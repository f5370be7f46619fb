// The schema of every kfac_ext op, in one place. Kernels are registered per
// device in csrc/cpu/ (TORCH_LIBRARY_IMPL(kfac_ext, CPU, m)) and csrc/cuda/
// (TORCH_LIBRARY_IMPL(kfac_ext, CUDA, m)); fake (meta) kernels and a
// plain-PyTorch reference for each op live in kfac_ext/ops.py.
#include <Python.h>
#include <torch/library.h>

TORCH_LIBRARY(kfac_ext, m) {
  // factor <- beta * factor + alpha * X^T X for X (rows, d); with append_ones
  // X is treated as [X, 1] (bias column) without copying it. The CPU kernel
  // computes one triangle (symmetric rank-k update), the CUDA kernel a full
  // GEMM (faster there); both mirror the upper triangle into the lower one.
  m.def("cov_update_(Tensor(a!) factor, Tensor x, float alpha, float beta, bool append_ones=False) -> ()");
  // factor <- beta * factor + alpha * sum_n X[n] X[n]^T for X (N, C, L): the
  // gradient factor of a Conv2d straight from the NCHW output gradient.
  m.def("channel_cov_update_(Tensor(a!) factor, Tensor x, float alpha, float beta) -> ()");
  // Conv2d activation factor A (docs/design.md §2) from the NCHW input,
  // without materialising the im2col matrix.
  m.def("conv2d_act_factor(Tensor input, int[2] kernel_size, int[2] stride, int[2] padding, int[2] dilation, bool has_bias) -> Tensor");
  // Symmetric eigendecompositions (eigenvalues ascending, clamped at 0 when
  // clamp), equal sizes batched; float32 failures are retried in float64.
  m.def("batched_eigh(Tensor[] factors, bool clamp=True) -> (Tensor[], Tensor[])");
  // Q_G [(Q_G^T grad Q_A) / (d_G d_A^T + damping)] Q_A^T per layer, batched
  // over layers of equal shape.
  m.def("eigen_precondition(Tensor[] grads, Tensor[] qa, Tensor[] da, Tensor[] qg, Tensor[] dg, float damping) -> Tensor[]");
  // G_inv grad A_inv per layer (the inverse method's P; new tensors). The CPU
  // kernel runs small layers one per thread; elsewhere a per-layer loop.
  m.def("inverse_precondition(Tensor[] grads, Tensor[] a_inv, Tensor[] g_inv) -> Tensor[]");
  // Upper triangles of square matrices, concatenated into one flat buffer,
  // and the inverse (mirrored, scaled) into existing matrices.
  m.def("pack_triu(Tensor[] mats) -> Tensor");
  m.def("unpack_triu_(Tensor packed, Tensor(a!)[] mats, float scale=1.0) -> ()");
  // sum over layers of <precond, grad> (the KL-clip reduction), a 0-d tensor.
  m.def("kl_clip_sum(Tensor[] precond, Tensor[] grads) -> Tensor");
  // One step of the eigen method on the parameters' gradients, in place:
  // Γ = [weight_grad | bias_grad] per layer (bias_grads: one per layer whose
  // qa has the extra row), P by eigen_precondition, ν = min(1, sqrt(kl_clip /
  // |kl_factor * sum <P, Γ>|)) (1 when kl_clip <= 0), gradients <- ν P.
  // Returns ν as a 0-d float64 tensor on the gradients' device (no host
  // synchronisation on a GPU). Device-agnostic (composite).
  m.def("precondition_grads_(Tensor(a!)[] weight_grads, Tensor(b!)[] bias_grads, Tensor[] qa, Tensor[] da, Tensor[] qg, Tensor[] dg, float damping, float kl_clip, float kl_factor) -> Tensor");
  // The same for the inverse method: P = g_inv Γ a_inv per layer (the damped
  // factor inverses; a_inv has the bias row where the layer has a bias).
  m.def("precondition_grads_inverse_(Tensor(a!)[] weight_grads, Tensor(b!)[] bias_grads, Tensor[] a_inv, Tensor[] g_inv, float kl_clip, float kl_factor) -> Tensor");
  // (F + damping I)^-1 of symmetric factors (their lower triangles read): the
  // inverse of the Cholesky factor and its product by recursive blocks (GEMMs),
  // blocks of at most `leaf` rows by plain loops (CPU only); ok[k] is false
  // where factor k's pivots or inverse were not positive / finite (its inverse
  // then undefined: the caller retries it).
  m.def("damped_inverses(Tensor[] factors, float damping, int leaf=64) -> (Tensor[] inverses, Tensor ok)");
}

// An importable, empty Python module: importing kfac_ext._C loads this shared
// library, which runs the registrations above.
extern "C" PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}
